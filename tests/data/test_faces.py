"""Face detection and cropping on a real portrait (skimage's astronaut), offline."""

import cv2
import numpy as np
import pytest
import skimage.data

from lipstep.data.faces import (
    Box,
    CropBox,
    box_iou,
    centre_box,
    clip_crop_box,
    crop_frames,
    crop_portrait,
    detect_faces,
    dlib_available,
    portrait_box,
    resolve_detector,
)
from lipstep.errors import DataError

# where the astronaut's face is in the 512x512 photo (measured once by hand-checked Haar output)
FACE = Box(175.0, 65.0, 97.0, 97.0, 1.0)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


def _pan(image, n=25, shift=40):
    """A video panning right by `shift` px over n frames (the face moves left in the frame)."""
    frames = [image[40:440, 20 + i * shift // (n - 1):420 + i * shift // (n - 1)] for i in range(n)]
    return np.stack(frames)  # [n, 400, 400, 3]


def test_haar_finds_the_astronaut(astronaut):
    faces = detect_faces(astronaut, "haar")
    assert faces, "no face found"
    best = max(faces, key=lambda b: b.score)
    assert box_iou(best, FACE) > 0.6, best


def test_haar_on_a_blank_image_finds_nothing():
    assert detect_faces(np.full((240, 320, 3), 128, np.uint8), "haar") == []
    assert detect_faces(np.zeros((64, 64, 3), np.uint8), "none") == []


@pytest.mark.parametrize("shape", [(2, 3000), (2000, 1), (1, 1), (30, 4000)])
def test_haar_on_a_sliver_finds_nothing_instead_of_failing(shape):
    """An image thinner than the cascade's window once downscaled (3000 x 2, 4000 x 30): no face, no error."""
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert detect_faces(image, "haar") == []


def test_detector_names():
    assert resolve_detector("auto") == ("dlib" if dlib_available() else "haar")
    assert resolve_detector("none") == "none"
    with pytest.raises(DataError, match="unknown face detector"):
        resolve_detector("mtcnn")
    if not dlib_available():
        with pytest.raises(DataError, match="dlib"):
            resolve_detector("dlib")


@pytest.mark.skipif(not dlib_available(), reason="dlib (the optional 'faces' extra) not installed")
def test_dlib_finds_the_astronaut(astronaut):
    faces = detect_faces(astronaut, "dlib")
    assert faces and box_iou(max(faces, key=lambda b: b.w), FACE) > 0.4


def test_crop_portrait_shape_and_centering(astronaut):
    out = crop_portrait(astronaut, 64, detector="haar")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    box, found = portrait_box(astronaut, "haar")
    assert found and box.w == box.h
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    assert abs(cx - (FACE.x + FACE.w / 2)) < 10
    assert 0 < cy - (FACE.y + FACE.h / 2) < 0.25 * FACE.h  # shifted down a bit, towards the chin
    assert 1.6 * FACE.w < box.w < 2.0 * FACE.w


def test_crop_portrait_without_a_face_falls_back_to_centre():
    image = np.zeros((100, 80, 3), np.uint8)
    image[10:90, :, 0] = 200
    with pytest.warns(UserWarning, match="no face"):
        out = crop_portrait(image, 32, detector="haar")
    assert out.shape == (32, 32, 3)
    assert portrait_box(image, "haar") == (CropBox(0, 10, 80, 80), False)
    with pytest.raises(DataError, match="no face found"):
        crop_portrait(image, 32, detector="haar", strict=True)
    assert portrait_box(image, "none") == (CropBox(0, 10, 80, 80), True)


def test_clip_crop_box_is_one_stable_box_for_a_panning_video(astronaut):
    video = _pan(astronaut)
    box = clip_crop_box(video, "haar", sample_every=2)
    assert box is not None and box.w == box.h
    # the face centre moves from x=203 (first frame) to x=163 (last): the box sits at the median
    centres = [max(detect_faces(f, "haar"), key=lambda b: b.w).x + FACE.w / 2 for f in video[::6]]
    assert max(centres) - min(centres) > 25
    assert abs(box.x + box.w / 2 - np.median(centres)) < 8
    assert clip_crop_box(video[::-1], "haar", sample_every=2) == box  # order does not matter
    crops = crop_frames(video, box, 48)
    assert crops.shape == (25, 48, 48, 3) and crops.dtype == np.uint8


def test_clip_crop_box_rejects_outlier_frames(astronaut):
    video = _pan(astronaut, shift=0)
    clean = clip_crop_box(video, "haar", sample_every=1)
    shifted = np.roll(video[0], (120, -100), axis=(0, 1))  # the face somewhere else
    noisy = video.copy()
    noisy[[3, 11, 19]] = shifted
    assert clip_crop_box(noisy, "haar", sample_every=1) == clean
    assert clip_crop_box(np.full((6, 64, 64, 3), 90, np.uint8), "haar") is None


def test_clip_crop_box_none_is_the_centre_square():
    assert clip_crop_box(np.zeros((3, 48, 80, 3), np.uint8), "none") == CropBox(16, 0, 48, 48)
    assert centre_box(64, 64) == CropBox(0, 0, 64, 64)


def test_crop_frames_pads_out_of_frame_boxes_by_edge_replication():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    box = CropBox(-10, -5, 30, 30)
    out = crop_frames(frames, box, 30)  # same size: exact pixels, no resampling
    assert out.shape == (3, 30, 30, 3)
    np.testing.assert_array_equal(out[:, 5:, 10:], frames[:, :25, :20])
    np.testing.assert_array_equal(out[:, 0, 10:], frames[:, 0, :20])  # rows above repeat row 0
    np.testing.assert_array_equal(out[:, 7, :10], np.repeat(frames[:, 2, :1], 10, axis=1))
    far = crop_frames(frames, CropBox(500, 500, 20, 20), 8)  # entirely outside: the corner pixel
    assert far.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(far, np.broadcast_to(frames[:, -1:, -1:], (3, 8, 8, 3)))
    big = crop_frames(frames, CropBox(-30, -30, 120, 120), 64)  # larger than the frame, shrunk
    assert big.shape == (3, 64, 64, 3)
    grown = crop_frames(frames, CropBox(5, 5, 10, 10), 40)  # grown with bicubic
    assert grown.shape == (3, 40, 40, 3)
    np.testing.assert_array_equal(grown[0], cv2.resize(frames[0, 5:15, 5:15], (40, 40),
                                                       interpolation=cv2.INTER_CUBIC))
