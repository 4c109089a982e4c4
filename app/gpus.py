"""How many GPUs this process sees: the one probe behind the page's choices (which backbones to
propose, how many GPUs a job may ask for), the predictors' placement and the supervisor's one
worker per GPU."""

from __future__ import annotations

import torch


def gpu_count() -> int:
    """Visible CUDA devices; 0 when there are none or the driver cannot be asked (a broken driver
    must not stop the studio: it runs on the CPU)."""
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0
