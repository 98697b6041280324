"""`python -m vidpress.evaluation.run_lmms_eval ARGS`: lmms-eval's command line with vidpress imported first.

lmms-eval imports transformers' image code (hence torchvision) before it loads any model plugin; where
torchvision's compiled ops cannot load, vidpress's shim has to run earlier than that (see vidpress/compat.py).
Elsewhere `python -m lmms_eval ARGS` does the same. `accelerate launch -m vidpress.evaluation.run_lmms_eval` shards.
"""

import sys

import vidpress  # noqa: F401  (the torchvision shim, before lmms-eval imports transformers)

if __name__ == "__main__":
    from lmms_eval.cli.dispatch import main

    main()
    sys.exit(0)
