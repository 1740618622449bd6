"""Expression coefficients grouped by face region for the viewer's sliders."""
from __future__ import annotations

from typing import Optional, Sequence

# (panel title, name prefix), matched case-insensitively in this order; ARKit / MediaPipe names start so
REGIONS = (("Brows", "brow"), ("Eyes", "eye"), ("Cheeks", "cheek"), ("Nose", "nose"), ("Jaw", "jaw"),
           ("Mouth", "mouth"), ("Tongue", "tongue"))
OTHER = "Other"
UNNAMED = "Coefficients"


def group_coefficients(names: Optional[Sequence[str]], count: int) -> list[tuple[str, list[tuple[int, str]]]]:
    """Slider groups [(title, [(coefficient index, label), ...]), ...] for ``count`` coefficients.

    With ``names`` (the data's exp_names) each coefficient joins the region its name starts with, in the order
    of ``REGIONS``, else ``Other``; without names there is one group of labels ``0``, ``1``, ... (the
    exp_ori indices). Empty groups are left out; indices keep their order inside a group."""
    if not names or len(names) != count:
        return [(UNNAMED, [(i, str(i)) for i in range(count)])] if count else []
    groups: dict[str, list[tuple[int, str]]] = {title: [] for title, _ in REGIONS}
    groups[OTHER] = []
    for i, name in enumerate(names):
        folded = name.lower()
        title = next((t for t, prefix in REGIONS if folded.startswith(prefix)), OTHER)
        groups[title].append((i, name))
    return [(title, members) for title, members in groups.items() if members]
