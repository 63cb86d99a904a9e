"""``openhart serve``: a local browser UI and JSON HTTP API over one loaded HART pipeline.

Files, one job each:

- ``schema.py``: per-server limits, the strict request model, the response bodies (OpenAPI).
- ``queue.py``: the bounded queue and the worker threads that run the pipeline (optional batching).
- ``safety.py``: the optional prompt-safety hook (a callable or a local transformers classifier).
- ``app.py``: the FastAPI app: routes, validation errors, static page.
- ``guard.py``: ASGI middleware before every route: method, Host, content type, body size, strict JSON.
- ``protocol.py``: uvicorn's h11 protocol with header/body deadlines and a connection cap.
- ``errors.py``: the JSON error body, bounded in size and never quoting the input.
- ``cli.py``: the ``serve`` command (load the model once, run uvicorn, exit 0 on SIGINT/SIGTERM).
- ``static/``: the page (``index.html``) and its script (``app.js``), which only call the API.

Nothing here is imported by ``openhart`` itself, so the web extra stays optional.
"""
