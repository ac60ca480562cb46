"""Template frames in output order, from RAM or from the spill file."""

import numpy as np
import pytest

from dhserve.engine.frames import looped_frames, template_index


def test_loop_orders():
    assert [template_index(i, 4, "pingpong") for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert [template_index(i, 4, "restart") for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert {template_index(i, 1, "pingpong") for i in range(5)} == {0}


@pytest.mark.parametrize("loop", ["pingpong", "restart"])
@pytest.mark.parametrize("budget", [10 << 20, 1 << 30], ids=["spilled", "in-memory"])
def test_frames_match_the_template_in_loop_order(example_avatar, template_frames, loop,
                                                 budget, tmp_path):
    n = len(template_frames)
    total = 2 * n + 17
    produced = list(looped_frames(example_avatar, 0, n, total, loop, budget, tmp_path))
    assert [index for index, _ in produced] == [template_index(i, n, loop) for i in range(total)]
    for index, frame in produced[::7]:
        assert np.array_equal(frame, template_frames[index])
    assert list(tmp_path.iterdir()) == []              # the spill file is anonymous and gone
