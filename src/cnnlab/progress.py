"""Progress bars where someone watches them: a terminal, or a Jupyter notebook (tqdm's
widgets there, its text bar where ipywidgets is not installed); nothing in a log or a pipe,
where a bar redrawn with carriage returns would leave hundreds of frames. The epoch lines of
:class:`cnnlab.callbacks.ProgressBar` are printed either way.
"""

from __future__ import annotations

import importlib.util
import sys


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel."""
    shell = sys.modules.get("IPython")
    if shell is None or not hasattr(shell, "get_ipython"):
        return False
    ipython = shell.get_ipython()
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def watched(file=None) -> bool:
    """Whether a bar drawn on ``file`` (stderr by default) is seen as it moves."""
    file = sys.stderr if file is None else file
    if in_notebook():
        return True
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


def bar(total: int, desc: str, unit: str, file=None, **kwargs):
    """A tqdm bar (widgets in a notebook), or None where no one would see it move."""
    if not watched(file):
        return None
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:  # a terminal, or a notebook without the widgets: the text bar
        from tqdm import tqdm
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr if file is None else file,
        **kwargs,
    )
