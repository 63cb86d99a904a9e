"""``torchrun --nproc_per_node N -m openhart.synthesize --prompts FILE --out DIR ...``

The same command as ``openhart synthesize``, as a module that torchrun can launch once per device.
"""

from openhart.synthesis.cli import main

if __name__ == "__main__":
    main()
