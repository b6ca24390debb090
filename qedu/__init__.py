"""qedu: learn how quantization makes neural networks cheaper to train and to run.

Every lesson starts with::

    import qedu
    qedu.setup(seed=0)
"""
from __future__ import annotations

import os
import platform
import random
import sys

__version__ = "0.1.0"

__all__ = ["__version__", "setup", "environment_report"]


def setup(seed: int = 0, num_threads: int | None = 1) -> None:
    """Make a lesson reproducible and fast on a laptop CPU.

    Seeds Python's ``random``, numpy and torch with ``seed``; sets torch to ``num_threads``
    CPU threads (one is the fastest and steadiest choice for the small models in the
    lessons, even on a busy shared machine; pass ``None`` to leave torch's default); and sets
    matplotlib defaults that read well in a notebook. Returns ``None``.

    >>> setup(seed=0)
    """
    from qedu._validation import check_int

    seed = check_int(seed, "seed", 0, 2**32 - 1)
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads is not None:
        torch.set_num_threads(check_int(num_threads, "num_threads", 1, os.cpu_count() or 1024))
    try:
        import matplotlib as mpl
    except ImportError:  # pragma: no cover - matplotlib is a core dependency
        return None
    mpl.rcParams.update(
        {
            "figure.figsize": (8.0, 3.2),
            "figure.dpi": 90,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
        }
    )
    return None


def environment_report() -> dict:
    """Versions, CPU/GPU and thread count of this machine, without touching the network.

    >>> sorted(environment_report())[:3]
    ['cpu_count', 'cuda', 'machine']
    """
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {
        "qedu": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "mps": mps,
    }
