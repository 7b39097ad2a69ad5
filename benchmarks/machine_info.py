"""The machine description every benchmark writes next to its figures (absolute times only mean something with it)."""

from __future__ import annotations

import os
import platform


def machine(**extra) -> dict:
    """CPU count, torch threads, device, library versions, platform; `extra` (e.g. load averages) appended."""
    import torch
    import transformers
    import trl

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if gpu else "cpu",
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }
