"""Draw the architecture figure of this DisCoM-KD implementation (the model in model_pytorch.py).

Regenerate the figure with

    python tools/make_arch_figure.py            # writes Arch.png at the repository root
    python tools/make_arch_figure.py out.png    # or to any other path

matplotlib is needed by this script only, not by the model or the training code, so it is an
optional dependency: without it the script says so on stderr and exits with status 2.

Layout: the first modality fills the top half and the second the bottom half, drawn as mirror
images of each other, so that the heads both modalities feed (C_aux, D_inf, D_irr, D_adv) sit in
the band between them and every feature reaches its head with a short arrow and no crossing.
"""
from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from PIL import Image  # pillow is a dependency of matplotlib, so it is there whenever matplotlib is
except ImportError:  # optional dependency: main() reports it
    Figure = None

MISSING_MATPLOTLIB = "error: tools/make_arch_figure.py needs matplotlib (pip install matplotlib)"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "Arch.png"

# The drawing is laid out on a grid of 10 units per inch: x in [0, 140], y in [-12, 80].
# 14 x 9.2 inches at 150 dpi keeps the 9 pt text readable; see save_png for the file size.
X_RANGE, Y_RANGE = (0, 140), (-12, 80)
DPI = 150
MID = 40  # y of the shared-heads band; the two modalities mirror each other around it

# Distance from MID of each row of a modality (positive: up for the first modality, down for the
# second). The feature row is the nearest so that its arrows to the shared heads stay short.
ROW_FEATURES = 14
ROW_INPUT = 23
ROW_TASK = 25
ROW_SPECIFIC = 32
ROW_TITLE = 37.5
BAND_NEAR, BAND_FAR = 7.5, 39.5  # extent of a modality's shaded background

# Column centres (x) shared by both modalities and the middle band.
COL_INPUT = 4
COL_ENCODER = 18
COL_PROJECTION = 38.5
COL_INVARIANT = 59
COL_TASK = 72
COL_INFORMATIVE = 95
COL_SPLIT = 110  # where the specific encoder's 512-d output splits into its two halves
COL_IRRELEVANT = 125

# Colour code: one hue per feature part, so a part and the encoder that produces it match.
INVARIANT = ("#d6e6fb", "#2f65ad")  # (fill, edge)
INFORMATIVE = ("#d8f1d3", "#3a8a35")
IRRELEVANT = ("#fde3c6", "#c0721d")
SPECIFIC = ("#e9def7", "#6f4fa0")  # the specific encoder: informative + irrelevant halves
HEAD = ("#ffffff", "#555555")
LOSS = ("#fad4d0", "#c0392b")
TEST_TIME_EDGE = "#e0a000"  # thick outline of what single-modality inference keeps
ARROW = "#404040"
FONT = 9


@dataclass(frozen=True)
class Box:
    """Geometry of a drawn box, to attach arrows to its edges."""

    cx: float
    cy: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return self.cx - self.w / 2, self.cy

    @property
    def right(self) -> tuple[float, float]:
        return self.cx + self.w / 2, self.cy

    def facing(self, x: float, y_target: float) -> tuple[float, float]:
        """Point at abscissa x on the top or bottom edge, whichever faces y_target.

        Lets one description of a modality serve both halves of the mirrored layout.
        """
        side = 1 if y_target > self.cy else -1
        return x, self.cy + side * self.h / 2


def draw_box(ax, cx, cy, w, h, text, colours, *, test_time=False, fontsize=FONT) -> Box:
    fill, edge = colours
    if test_time:
        edge, linewidth = TEST_TIME_EDGE, 2.8
    else:
        linewidth = 1.2
    ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0,rounding_size=1.2",
                                facecolor=fill, edgecolor=edge, linewidth=linewidth, zorder=2))
    ax.text(cx, cy, text, ha="center", va="center", fontsize=fontsize, linespacing=1.35, zorder=3)
    return Box(cx, cy, w, h)


def draw_loss(ax, cx, cy, text, w=7.0) -> Box:
    """Loss terms are small red rounded labels, so they read apart from the network blocks."""
    fill, edge = LOSS
    h = 4.0
    ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0,rounding_size=2",
                                facecolor=fill, edgecolor=edge, linewidth=1.2, zorder=2))
    ax.text(cx, cy, text, ha="center", va="center", fontsize=FONT + 2, color="#8e1f14", zorder=3)
    return Box(cx, cy, w, h)


def draw_arrow(ax, *points, dashed=False, head=True):
    """Polyline through points, with an arrowhead at the last one unless head is False."""
    linestyle = (0, (4, 3)) if dashed else "-"
    for start, end in zip(points[:-2], points[1:-1]):
        ax.plot(*zip(start, end), color=ARROW, linewidth=1.2, linestyle=linestyle, zorder=1)
    ax.add_patch(FancyArrowPatch(points[-2], points[-1], arrowstyle="-|>" if head else "-", mutation_scale=11,
                                 shrinkA=0, shrinkB=0, color=ARROW, linewidth=1.2, linestyle=linestyle, zorder=1))


def draw_modality(ax, m: int, sign: int) -> dict[str, Box]:
    """Draws modality m's branch (sign +1: above MID, -1: below) and returns its three feature boxes."""

    def y(offset):
        return MID + sign * offset

    # away from the middle band: above the line in the top half, below it in the bottom half
    away = "bottom" if sign > 0 else "top"
    name = "first" if m == 1 else "second"
    band_y0 = min(y(BAND_NEAR), y(BAND_FAR))
    ax.add_patch(FancyBboxPatch((0.5, band_y0), 139, BAND_FAR - BAND_NEAR, boxstyle="round,pad=0,rounding_size=2",
                                facecolor="#f6f7f9", edgecolor="#c9ccd2", linewidth=1, zorder=0))
    ax.text(1.5, y(ROW_TITLE), f"{name} modality $x^{m}$", ha="left", va="center", fontsize=13, weight="bold")

    x_in = draw_box(ax, COL_INPUT, y(ROW_INPUT), 7, 6, f"input\n$x^{m}$", HEAD)
    e_spec = draw_box(ax, COL_ENCODER, y(ROW_SPECIFIC), 14, 6,
                      f"specific encoder\n$E^{m}_{{\\mathrm{{spec}}}}$", SPECIFIC, test_time=True)
    e_inv = draw_box(ax, COL_ENCODER, y(ROW_FEATURES), 14, 6,
                     f"invariant encoder\n$E^{m}_{{\\mathrm{{inv}}}}$", INVARIANT, test_time=True)
    proj = draw_box(ax, COL_PROJECTION, y(ROW_FEATURES), 15, 7,
                    f"projection head $P^{m}$\nLinear 512→256\nBatchNorm, ReLU", INVARIANT, test_time=True)
    z_inv = draw_box(ax, COL_INVARIANT, y(ROW_FEATURES), 14, 6,
                     f"invariant\n$z^{m}_{{\\mathrm{{inv}}}}$ (256-d)", INVARIANT)
    z_inf = draw_box(ax, COL_INFORMATIVE, y(ROW_FEATURES), 14, 6,
                     f"informative\n$z^{m}_{{\\mathrm{{inf}}}}$ (256-d)", INFORMATIVE)
    z_irr = draw_box(ax, COL_IRRELEVANT, y(ROW_FEATURES), 14, 6,
                     f"irrelevant\n$z^{m}_{{\\mathrm{{irr}}}}$ (256-d)", IRRELEVANT)
    task = draw_box(ax, COL_TASK, y(ROW_TASK), 25, 6,
                    f"task classifier $C^{m}$\n"
                    f"concat($z^{m}_{{\\mathrm{{inv}}}}, z^{m}_{{\\mathrm{{inf}}}}$): 512 → classes",
                    HEAD, test_time=True)
    l_cl = draw_loss(ax, task.left[0] - 8.5, y(ROW_TASK), r"$\mathcal{L}_{\mathrm{cl}}$")

    # the same input feeds both encoders: leave the input box towards each encoder's row, then turn
    draw_arrow(ax, x_in.facing(COL_INPUT, e_spec.cy), (COL_INPUT, e_spec.cy), e_spec.left)
    draw_arrow(ax, x_in.facing(COL_INPUT, e_inv.cy), (COL_INPUT, e_inv.cy), e_inv.left)

    # invariant path: encoder -> projection -> z_inv
    draw_arrow(ax, e_inv.right, proj.left)
    ax.text((e_inv.right[0] + proj.left[0]) / 2, e_inv.cy + sign * 0.6, "512-d", ha="center", va=away, fontsize=8)
    draw_arrow(ax, proj.right, z_inv.left)

    # specific path: one 512-d vector, split in halves (first 256 dims informative, last 256 irrelevant)
    split = (COL_SPLIT, e_spec.cy)
    draw_arrow(ax, e_spec.right, split, head=False)
    ax.plot(*split, marker="o", markersize=4, color=ARROW, zorder=1)
    ax.text(e_spec.right[0] + 2, e_spec.cy + sign * 0.6, "512-d specific vector", ha="left", va=away, fontsize=8)
    draw_arrow(ax, split, z_inf.facing(z_inf.cx, split[1]))
    draw_arrow(ax, split, z_irr.facing(z_irr.cx, split[1]))
    label_y = (split[1] + z_inf.facing(z_inf.cx, split[1])[1]) / 2
    ax.text(COL_SPLIT - 8.5, label_y, "first 256\ndims", ha="right", va="center", fontsize=8)
    ax.text(COL_SPLIT + 8.5, label_y, "last 256\ndims", ha="left", va="center", fontsize=8)

    # task classifier on concat(z_inv, z_inf): the only head kept at test time. It sits above the
    # gap between z_inv and z_inf so that both arrows stay clear of the arrows to the shared heads.
    draw_arrow(ax, z_inv.facing(z_inv.cx + 4, task.cy), task.facing(task.cx - 6, z_inv.cy))
    draw_arrow(ax, z_inf.facing(z_inf.cx - 4, task.cy), task.facing(task.cx + 8, z_inf.cy))
    draw_arrow(ax, task.left, l_cl.right)

    # L_perp pairs z_inf with each of its neighbours: dashed, undirected, a label in the gap
    for left, right in ((z_inv, z_inf), (z_inf, z_irr)):
        label = draw_loss(ax, (left.right[0] + right.left[0]) / 2, left.cy, r"$\mathcal{L}_{\perp}$", w=6)
        draw_arrow(ax, left.right, label.left, dashed=True, head=False)
        draw_arrow(ax, label.right, right.left, dashed=True, head=False)

    return {"inv": z_inv, "inf": z_inf, "irr": z_irr}


def draw_shared_heads(ax, features: list[dict[str, Box]]):
    """Heads fed by both modalities, in the band at MID, each with arrows from both halves."""
    # left to right: the adversarial branch under z_inv, C_aux between z_inv and z_inf, then the
    # modality classifiers under the parts they read, each loss label beside its head
    ax.text(7.5, MID, "shared heads\n(both\nmodalities)", ha="center", va="center", fontsize=FONT, style="italic")
    l_adv = draw_loss(ax, 20, MID, r"$\mathcal{L}_{\mathrm{adv}}$")
    d_adv = draw_box(ax, 34, MID, 14, 7, "modality discrim.\n$D_{\\mathrm{adv}}$: 256 → 2", HEAD)
    grl = draw_box(ax, 52, MID, 13, 7, "GRL\nforward: identity\nbackward: ×(−λ)", INVARIANT)
    c_aux = draw_box(ax, 71, MID, 14, 7, "aux. classifier\n$C_{\\mathrm{aux}}$\n256 → classes", HEAD)
    l_aux = draw_loss(ax, 83.5, MID, r"$\mathcal{L}_{\mathrm{aux}}$")
    d_inf = draw_box(ax, COL_INFORMATIVE, MID, 14, 7, "modality classif.\n$D_{\\mathrm{inf}}$: 256 → 2", INFORMATIVE)
    l_mod = draw_loss(ax, COL_SPLIT, MID, r"$\mathcal{L}_{\mathrm{mod}}$", w=8)
    d_irr = draw_box(ax, COL_IRRELEVANT, MID, 14, 7, "modality classif.\n$D_{\\mathrm{irr}}$: 256 → 2", IRRELEVANT)

    for f in features:
        z_inv, z_inf, z_irr = f["inv"], f["inf"], f["irr"]
        draw_arrow(ax, z_inv.facing(z_inv.cx - 3, MID), grl.facing(grl.cx + 2, z_inv.cy))
        draw_arrow(ax, z_inv.facing(z_inv.cx + 4, MID), c_aux.facing(c_aux.cx - 4, z_inv.cy))
        draw_arrow(ax, z_inf.facing(z_inf.cx - 5, MID), c_aux.facing(c_aux.cx + 4, z_inf.cy))
        draw_arrow(ax, z_inf.facing(z_inf.cx, MID), d_inf.facing(d_inf.cx, z_inf.cy))
        draw_arrow(ax, z_irr.facing(z_irr.cx, MID), d_irr.facing(d_irr.cx, z_irr.cy))

    draw_arrow(ax, grl.left, d_adv.right)
    draw_arrow(ax, d_adv.left, l_adv.right)
    draw_arrow(ax, c_aux.right, l_aux.left)
    draw_arrow(ax, d_inf.right, l_mod.left)
    draw_arrow(ax, d_irr.left, l_mod.right)


def draw_footer(ax):
    notes = [
        r"Total loss = $w_{\mathrm{cl}}\mathcal{L}_{\mathrm{cl}} + w_{\mathrm{aux}}\mathcal{L}_{\mathrm{aux}}"
        r" + w_{\mathrm{mod}}\mathcal{L}_{\mathrm{mod}} + w_{\mathrm{adv}}\mathcal{L}_{\mathrm{adv}}"
        r" + w_{\perp}\mathcal{L}_{\perp}$   (all weights 1 by default)",
        r"$\mathcal{L}_{\perp}$ = mean cos($z_{\mathrm{inf}}, z_{\mathrm{irr}}$) + mean cos($z_{\mathrm{inf}},"
        r" z_{\mathrm{inv}}$);   GRL: identity forward, gradient × (−λ) backward",
        r"At test time modality $m$ uses only $E^m_{\mathrm{inv}}, E^m_{\mathrm{spec}}, P^m$ and $C^m$ (highlighted)",
        "Encoder kind per modality (both of its encoders): images (N,C,H,W) → ResNet-18,"
        " sequences (N,C,L) → 1-D ResNet-18,",
        "vectors (N,F) → MLP, MNIST-like digits → LeNet",
    ]
    for i, note in enumerate(notes):
        ax.text(1.5, -1.8 - 2.2 * i, note, ha="left", va="center", fontsize=FONT + 0.5)

    legend = [
        Patch(facecolor=INVARIANT[0], edgecolor=INVARIANT[1], label="invariant"),
        Patch(facecolor=INFORMATIVE[0], edgecolor=INFORMATIVE[1], label="informative"),
        Patch(facecolor=IRRELEVANT[0], edgecolor=IRRELEVANT[1], label="irrelevant"),
        Patch(facecolor=SPECIFIC[0], edgecolor=SPECIFIC[1], label="specific (informative + irrelevant)"),
        Patch(facecolor=LOSS[0], edgecolor=LOSS[1], label="loss term"),
        Patch(facecolor="white", edgecolor=TEST_TIME_EDGE, linewidth=2.8, label="used at test time"),
    ]
    ax.legend(handles=legend, loc="lower right", bbox_to_anchor=(0.995, 0.005), ncol=2, fontsize=FONT,
              frameon=True, framealpha=1, edgecolor="#c9ccd2")


def make_figure() -> Figure:
    # Figure without pyplot: no GUI backend or global state is involved in writing a PNG
    fig = Figure(figsize=((X_RANGE[1] - X_RANGE[0]) / 10, (Y_RANGE[1] - Y_RANGE[0]) / 10))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(*X_RANGE)
    ax.set_ylim(*Y_RANGE)
    ax.set_aspect("equal")
    ax.axis("off")
    features = [draw_modality(ax, 1, +1), draw_modality(ax, 2, -1)]
    draw_shared_heads(ax, features)
    draw_footer(ax)
    return fig


def save_png(fig: Figure, path: Path):
    """Writes fig as a 256-colour palette PNG.

    The drawing is a few flat colours plus anti-aliasing, so a palette loses nothing visible and
    makes the file about three times smaller than matplotlib's RGBA PNG (~110 KB instead of ~330 KB).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT,
                        help=f"PNG file to write (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if Figure is None:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return 2
    save_png(make_figure(), args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
