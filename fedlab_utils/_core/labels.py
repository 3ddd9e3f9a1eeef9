"""One place for method labels and their colours (names only: nothing here draws).

Every table and plot names a method by its canonical label ("FedAvg", "FedProx (mu=0.01)",
"Linear probe"); :func:`method_color` gives each label one colour in every notebook.
"""
from __future__ import annotations

import hashlib
import numbers

METHOD_COLORS = {
    # federated algorithms (tab10)
    "FedAvg": "#1f77b4", "FedProx": "#ff7f0e", "SCAFFOLD": "#2ca02c", "FedNova": "#d62728",
    "FedDyn": "#9467bd", "FedAvgM": "#8c564b", "FedAdam": "#e377c2", "FedYogi": "#bcbd22",
    "FedAdagrad": "#17becf",
    # meta-learning and personalisation (seaborn "muted" / "colorblind")
    "Reptile": "#4878d0", "FedMeta (FOMAML)": "#ee854a", "Per-FedAvg": "#6acc64", "FedPer": "#d65f5f",
    "FedRep": "#956cb4", "FedBABU": "#8c613c", "LG-FedAvg": "#dc7ec0", "Ditto": "#d5bb67",
    "APFL": "#82c6e2", "FedAvg + fine-tuning": "#0173b2",
    # fine-tuning modes (seaborn "dark")
    "Full": "#001c7f", "Linear probe": "#b1400d", "LoRA": "#12711c", "FFA-LoRA": "#006374",
    "BitFit": "#591e71", "Last layers": "#a23582", "None (prototypes)": "#b8850a",
    # reference points
    "Local only": "#7f7f7f", "Centralised": "#222222", "Pretrained (no fine-tuning)": "#aaaaaa",
}
ALIASES = {
    "fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD", "fednova": "FedNova",
    "feddyn": "FedDyn", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad", "reptile": "Reptile", "fomaml": "FedMeta (FOMAML)", "perfedavg": "Per-FedAvg",
    "fedper": "FedPer", "fedrep": "FedRep", "fedbabu": "FedBABU", "lg_fedavg": "LG-FedAvg", "ditto": "Ditto",
    "apfl": "APFL", "fedavg_ft": "FedAvg + fine-tuning", "full": "Full", "linear_probe": "Linear probe", "lora": "LoRA",
    "ffa_lora": "FFA-LoRA", "bitfit": "BitFit", "last_layers": "Last layers",
    "none": "None (prototypes)", "prototypes": "None (prototypes)", "local": "Local only",
    "local_only": "Local only", "centralised": "Centralised", "centralized": "Centralised",
    "pretrained": "Pretrained (no fine-tuning)",
}
# matplotlib's tab20b, for labels outside METHOD_COLORS
OTHER_COLORS = ("#393b79", "#5254a3", "#6b6ecf", "#9c9ede", "#637939", "#8ca252", "#b5cf6b", "#cedb9c",
                "#8c6d31", "#bd9e39", "#e7ba52", "#e7cb94", "#843c39", "#ad494a", "#d6616b", "#e7969c",
                "#7b4173", "#a55194", "#ce6dbd", "#de9ed6")


def canonical_label(name) -> str:
    """The plot label of a method: ``"fedavg"`` -> ``"FedAvg"``; unknown names come back unchanged."""
    text = str(name)
    if text in METHOD_COLORS:
        return text
    return ALIASES.get(text.strip().lower().replace("-", "_").replace(" ", "_"), text)


def method_label(name, options: dict | None = None) -> str:
    """The label of a method with its settings: ``method_label("fedprox", {"mu": 1.0})`` is
    ``"FedProx (mu=1)"``; no options give the canonical label."""
    base = canonical_label(name)
    if not options:
        return base
    text = ", ".join(f"{k}={v:g}" if isinstance(v, numbers.Real) and not isinstance(v, bool) else f"{k}={v}"
                     for k, v in options.items())
    return f"{base} ({text})"


def method_color(label) -> str:
    """Hex colour of a method label (or code name); settings in parentheses are ignored.

    Labels outside ``METHOD_COLORS`` get a colour from a hash of the text, the same in every session.
    """
    text = canonical_label(label)
    if text in METHOD_COLORS:
        return METHOD_COLORS[text]
    base = canonical_label(text.split(" (")[0])
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    return OTHER_COLORS[int(hashlib.md5(text.encode()).hexdigest(), 16) % len(OTHER_COLORS)]


def method_palette(labels) -> dict:
    """``{label: colour}`` for seaborn's ``palette=``."""
    return {label: method_color(label) for label in labels}
