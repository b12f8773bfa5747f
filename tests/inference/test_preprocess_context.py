"""2.5-D preprocessing (edge_agent.preprocess): which neighbours a slice gets, and the channel order.

The expectations are computed here by hand (windowing a constant image is a known number; neighbours by
the rule stated in docs/MANIFEST.md, written out per case), not by the functions under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.preprocess import (
    ContextSpec, PreprocessSpec, neighbour_indices, neighbour_of, prepare_slices, prepare_volume,
)

SPEC = PreprocessSpec(windows=((0.0, 200.0), (100.0, 100.0)), size=(8, 8), pixel_spacing_mm=None,
                      context=ContextSpec(offset_mm=5.0, windows=((0.0, 2000.0),)))


def test_regular_5mm_series_takes_the_adjacent_slices_and_repeats_itself_at_the_ends():
    below, above = neighbour_indices(np.array([0.0, 5.0, 10.0, 15.0]), 5.0)
    assert below.tolist() == [0, 0, 1, 2]
    assert above.tolist() == [1, 2, 3, 3]


def test_thin_slices_reach_offset_mm_away_not_the_next_slice():
    z = np.arange(12) * 1.25                     # 5 mm = 4 slices of 1.25 mm
    below, above = neighbour_indices(z, 5.0)
    assert below[6] == 2 and above[6] == 10
    assert below[2] == 0 and above[9] == 11      # nearest to the target when the target lies outside


def test_order_of_arrival_does_not_matter_and_a_gap_is_not_bridged():
    z = np.array([25.0, 0.0, 20.0, 5.0])         # shuffled, a 15 mm gap between 5 and 20
    assert neighbour_of(z, 3, 5.0, +1) == 3      # 20 is 15 mm away: more than 2 x 5 mm → itself
    assert neighbour_of(z, 3, 5.0, -1) == 1
    assert neighbour_of(z, 2, 5.0, -1) == 2
    assert neighbour_of(z, 2, 5.0, +1) == 0


def test_a_duplicate_position_is_never_its_own_neighbour():
    z = np.array([0.0, 5.0, 5.0, 10.0])
    assert neighbour_of(z, 1, 5.0, +1) == 3 and neighbour_of(z, 2, 5.0, -1) == 0


def test_input_channels_are_own_windows_then_below_then_above():
    hu = np.stack([np.full((16, 16), v, np.float32) for v in (-400.0, 0.0, 400.0)])
    x = prepare_volume(hu, (1.0, 1.0), SPEC, positions=np.array([0.0, 5.0, 10.0]))
    assert x.shape == (3, SPEC.channels, 8, 8) and SPEC.channels == 4

    def win(v, c, w):
        return min(1.0, max(0.0, (v - (c - w / 2)) / w))

    # middle slice (0 HU): own windows, then the context window of -400 (below) and of +400 (above)
    expected = [win(0.0, 0, 200), win(0.0, 100, 100), win(-400.0, 0, 2000), win(400.0, 0, 2000)]
    assert np.allclose(x[1, :, 4, 4], expected, atol=1e-6)
    # first slice: no slice below → its own context window repeats
    assert np.isclose(x[0, 2, 4, 4], win(-400.0, 0, 2000)) and np.isclose(x[0, 3, 4, 4], win(0.0, 0, 2000))
    # the own channels are exactly the 1-slice preprocessing
    assert np.array_equal(x[:, :2], prepare_slices(hu, (1.0, 1.0), SPEC))


def test_spec_round_trips_and_a_1_slice_spec_is_unchanged():
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
    plain = PreprocessSpec(windows=((40.0, 80.0),), size=(8, 8))
    assert "context" not in plain.to_dict() and plain.channels == 1
    hu = np.zeros((2, 16, 16), np.float32)
    assert np.array_equal(prepare_volume(hu, (1.0, 1.0), plain), prepare_slices(hu, (1.0, 1.0), plain))


@pytest.mark.parametrize("spacing", [0.625, 1.0, 2.5, 5.0])
def test_neighbours_lie_about_offset_mm_away_for_every_slice_inside_the_series(spacing):
    z = np.arange(int(60 / spacing)) * spacing
    below, above = neighbour_indices(z, 5.0)
    inside = (z >= 5.0) & (z <= z[-1] - 5.0)
    assert np.all(np.abs(z[above][inside] - z[inside] - 5.0) <= spacing / 2 + 1e-9)
    assert np.all(np.abs(z[inside] - z[below][inside] - 5.0) <= spacing / 2 + 1e-9)


def test_the_context_and_the_series_assembly_agree_on_what_is_the_same_position():
    """Two slices the assembly takes for one position must not be each other's neighbours (and vice versa):
    one tolerance, defined twice only because the preprocessing must import without pydicom."""
    from edge_agent.dicom import geometry
    from edge_agent.preprocess import SAME_POSITION_MM, neighbour_of

    assert SAME_POSITION_MM == geometry.SAME_POSITION_MM
    # 0.005 mm apart is one position: slice 1 has no neighbour below (it stands in for itself), not slice 0
    assert neighbour_of(np.array([0.0, 0.005, 5.0]), 1, 5.0, -1) == 1
