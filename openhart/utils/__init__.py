"""Small helpers shared by every component: typed configs and explicit randomness."""
