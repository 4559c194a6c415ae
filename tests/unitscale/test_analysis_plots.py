"""plot_scales / plot_histogram write non-empty PNGs; bad arguments are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unitscale.analysis import plot_histogram, plot_scales, track_scales
from unitscale.formats import E4M3, E4M3_FNUZ, FP16

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports():
    w = jax.random.normal(jax.random.key(0), (8, 4))
    x = jax.random.normal(jax.random.key(1), (16, 8))

    def loss(w, x, s):
        with jax.named_scope("mlp"):
            h = jax.nn.gelu(x @ (w * s))
        return jnp.mean(h**2)

    return {name: track_scales(loss, w, x, s, weight_argnums=0) for name, s in (("small", 0.02), ("unit", 1.0))}


def _png(path) -> bytes:
    content = path.read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 5000
    return content


def test_scales_figure_side_by_side(reports, tmp_path):
    fig = plot_scales(reports, formats=(FP16, E4M3), path=tmp_path / "s" / "scales.png", title="toy")
    _png(tmp_path / "s" / "scales.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["small", "unit"]
    n_rows = len({r.index for r in reports["small"]})
    assert len(panels[0].get_yticklabels()) == n_rows
    # A marker for every record whose statistic is positive (forward circles/squares, backward triangles).
    drawn = sum(len(c.get_offsets()) for c in panels[0].collections)
    assert drawn == sum(r.stats.rms > 0 for r in reports["small"])


def test_single_report_and_other_statistics(reports, tmp_path):
    plot_scales(reports["unit"], stat="abs_max", path=tmp_path / "one.png")
    _png(tmp_path / "one.png")


def test_histogram_of_records_and_arrays(reports, tmp_path):
    grad = next(r for r in reports["small"] if r.phase == "backward" and r.op == "dot_general")
    plot_histogram({"record": grad, "array": np.asarray(jax.random.normal(jax.random.key(2), (64,)))},
                   formats=(FP16, E4M3), path=tmp_path / "hist.png")
    _png(tmp_path / "hist.png")


def test_bad_arguments_are_named(reports, tmp_path):
    with pytest.raises(ValueError, match="stat='scale'"):
        plot_scales(reports, stat="scale")
    with pytest.raises(TypeError, match="reports must be"):
        plot_scales({})
    with pytest.raises(TypeError, match="formats must hold FPFormat"):
        plot_scales(reports, formats=["fp16"])
    grad = next(r for r in reports["small"] if r.phase == "backward")
    with pytest.raises(ValueError, match="no coverage for E4M3FNUZ"):
        plot_histogram(grad, formats=(E4M3_FNUZ, FP16), path=tmp_path / "x.png")
