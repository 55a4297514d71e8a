#!/bin/sh
# Usage: check.sh VENV
# The image can serve: the CLI starts, the server's modules import, and torch is 2.13.0 built for
# the CPU (a CUDA build would weigh gigabytes more and is refused here).
set -eu
"$1/bin/modelmora" --version
"$1/bin/python" - <<'PY'
import torch

import modelmora.serve.app  # noqa: F401  (the server's imports resolve)

assert torch.__version__.split("+")[0] == "2.13.0", f"torch {torch.__version__}, expected 2.13.0"
assert torch.version.cuda is None, (
    f"torch {torch.__version__} is a CUDA {torch.version.cuda} build: "
    "set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index and build again"
)
print(f"torch {torch.__version__} (CPU)")
PY
