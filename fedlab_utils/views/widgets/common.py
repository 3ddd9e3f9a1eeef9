"""What every panel shares: the control styles, two sliders, rendering into a panel's output,
and :func:`panel`, which wires named controls to one callback with ``interactive_output``.

A panel is an ``ipywidgets.VBox`` with its controls as attributes (``panel.alpha.value = 0.1``
recomputes, in a notebook, a test or a browser), ``panel.controls`` (name -> widget),
``panel.output`` (the ``Output`` the figure goes to), and after each recompute ``panel.result``
(what the callback returned), ``panel.seconds`` (how long compute + draw took), ``panel.calls``
(how many recomputes) and ``panel.error`` (the message of a rejected setting, or None).
"""
from __future__ import annotations

import html
import io
import time

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np

from ..._core import checks as chk

STYLE = {"description_width": "initial"}
LAYOUT = W.Layout(width="360px")


def show(fig) -> None:
    """Render ``fig`` as a PNG into the current output (the panel's Output widget), then close it
    so it is neither drawn twice nor kept in memory. One draw at the figure's own margins (the
    inline backend's ``bbox_inches="tight"`` would draw twice): a third less time per redraw."""
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        display(Image(buffer.getvalue(), format="png"))
    plt.close(fig)


def show_html(text: str) -> None:
    """Display ``text`` as HTML in the current output (nothing outside IPython)."""
    from IPython import get_ipython
    from IPython.display import HTML, display

    if get_ipython() is not None:
        display(HTML(text))


def panel(title: str, controls: dict, callback, *, visible=None, columns: int = 2) -> W.VBox:
    """VBox: a title, the ``visible`` controls in ``columns`` columns, a status line and the
    output of ``interactive_output(callback, controls)``; controls become attributes. A
    ``ValueError`` or ``FloatingPointError`` of the callback is shown, not raised."""
    visible = list(controls) if visible is None else list(visible)
    for name in visible:
        if name not in controls:
            chk.fail("controls", f"names among {list(controls)}", visible)
    shown = [controls[n] for n in visible]
    cols = [W.VBox(shown[i::columns]) for i in range(columns)]
    status = W.HTML(layout=W.Layout(min_height="1.5em"))
    box = W.VBox([W.HTML(f"<b>{html.escape(title)}</b>"), W.HBox(cols), status])
    box.controls = dict(controls)
    box.status = status
    box.result, box.seconds, box.calls, box.error = None, float("nan"), 0, None
    for name, widget in controls.items():
        setattr(box, name, widget)

    def wired(**kwargs):
        t0 = time.perf_counter()
        try:
            box.result = callback(**kwargs)
            box.error = None
        except (ValueError, FloatingPointError) as err:
            box.error = str(err)
            print(f"Not drawn: {err}")
        box.seconds = time.perf_counter() - t0
        box.calls += 1
        status.value = (f"<span style='color:#a00'>{html.escape(box.error)}</span>" if box.error
                        else f"<small>recomputed in {box.seconds:.2f} s</small>")

    box.output = W.interactive_output(wired, controls)
    box.children = (*box.children, box.output)
    return box


def log_slider(description, value, low, high, step=0.1):
    """A ``FloatLogSlider`` from ``low`` to ``high`` (base 10) that recomputes on release."""
    return W.FloatLogSlider(value=value, base=10, min=np.log10(low), max=np.log10(high), step=step,
                            description=description, continuous_update=False, readout_format=".3g",
                            style=STYLE, layout=LAYOUT)


def int_slider(description, value, low, high, step=1):
    """An ``IntSlider`` that recomputes on release."""
    return W.IntSlider(value=value, min=low, max=high, step=step, description=description,
                       continuous_update=False, style=STYLE, layout=LAYOUT)
