"""Video masking schedules: whole frames are whole frames, cubes are cubes, counts exact."""

import itertools

import jax
import numpy as np
import pytest

from tokenlab.nn import video_masking


def test_random_mask_exact_count_and_varies_by_row():
  m = np.asarray(video_masking.random_mask(jax.random.key(0), (6, 2, 3, 4), 0.5))
  assert m.shape == (6, 2, 3, 4) and m.dtype == bool
  assert (m.reshape(6, -1).sum(-1) == 12).all()
  assert len({r.tobytes() for r in m.reshape(6, -1)}) > 1


def test_frame_mask_covers_whole_frames_exactly():
  m = np.asarray(video_masking.frame_mask(jax.random.key(1), 8, 10, 0.3))
  assert m.shape == (8, 10) and (m.sum(-1) == 3).all()
  grid = np.broadcast_to(m[:, :, None, None], (8, 10, 4, 4))
  # Each frame of the token grid is all masked or all visible.
  per_frame = grid.reshape(8, 10, -1)
  assert (per_frame.all(-1) | ~per_frame.any(-1)).all()
  assert not np.asarray(video_masking.frame_mask(jax.random.key(1), 2, 10, 0.0)).any()
  assert np.asarray(video_masking.frame_mask(jax.random.key(1), 2, 10, 1.0)).all()


def _covered_by_full_cubes(mask: np.ndarray, cube) -> bool:
  """Every masked position lies in some fully masked cube of the given size."""
  covered = np.zeros_like(mask)
  for corner in video_masking.cube_corners(mask.shape, cube):
    sl = tuple(slice(c, c + s) for c, s in zip(corner, cube))
    if mask[sl].all():
      covered[sl] = True
  return bool((covered == mask).all())


@pytest.mark.parametrize("ratio,cube", [(0.4, (2, 2, 2)), (0.15, (1, 3, 2)), (0.9, (2, 2, 3))])
def test_cube_mask_is_a_union_of_cubes_reaching_the_ratio(ratio, cube):
  grid = (4, 6, 6)
  m = np.asarray(jax.jit(lambda r: video_masking.cube_mask(r, 5, grid, ratio, cube))(
      jax.random.key(2)))
  assert m.shape == (5, *grid)
  n, target, vol = np.prod(grid), np.ceil(ratio * np.prod(grid)), np.prod(cube)
  for clip in m:
    assert target <= clip.sum() < target + vol      # stops right after the target
    assert _covered_by_full_cubes(clip, cube)
  assert len({c.tobytes() for c in m}) > 1
  assert m.sum() < 5 * n                            # not the trivial all-masked grid


def test_random_mask_is_not_a_union_of_cubes():
  # The cube check above can fail: a random mask of the same ratio is (almost surely) not.
  m = np.asarray(video_masking.random_mask(jax.random.key(3), (1, 4, 6, 6), 0.4))[0]
  assert not _covered_by_full_cubes(m, (2, 2, 2))


def test_bad_arguments_name_the_problem():
  with pytest.raises(ValueError, match="does not fit"):
    video_masking.cube_mask(jax.random.key(0), 1, (2, 4, 4), 0.5, (3, 2, 2))
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    video_masking.frame_mask(jax.random.key(0), 1, 4, 1.5)


def test_cube_corners_enumerates_every_fitting_corner():
  corners = video_masking.cube_corners((3, 4, 5), (2, 2, 2))
  assert {tuple(c) for c in corners} == set(itertools.product(range(2), range(3), range(4)))
