"""The pixel mouth probe reads the labelled mouth opening of real rendered frames."""

import numpy as np
import pytest
from tests.mediafixtures import make_tiny_avatar_data

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.eval.mouth import PixelMouthProbe, darkness_features
from lipstep.fit import pearson

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_tiny_avatar_data(tmp_path_factory.mktemp("mouth")) / "prepared"


def _clip(prepared, row):
    d = open_shard(prepared / row["shard"], ("frames", "mouth"))
    return np.asarray(d["frames"]), np.asarray(d["mouth"][:, 0])


def test_probe_generalises_to_another_identity(prepared):
    rows = read_manifest(prepared)
    (fa, oa), (fb, ob) = _clip(prepared, rows[0]), _clip(prepared, rows[1])
    probe = PixelMouthProbe.fit(np.concatenate([fa, fb]), np.concatenate([oa, ob]))
    assert probe.calib_corr > 0.8
    fc, oc = _clip(prepared, rows[2])
    pred = probe.predict(fc)
    assert pearson(pred, oc) > 0.7                       # another identity, never fitted
    assert np.abs(pred - oc).mean() < np.abs(pred - oc[::-1]).mean()  # time-reversed labels fit worse


def test_features_reject_bad_input_and_flat_frames_read_closed():
    with pytest.raises(ValueError):
        darkness_features(np.zeros((2, 8, 8, 3), np.float32))
    flat = np.full((3, 32, 32, 3), 180, np.uint8)
    assert np.allclose(darkness_features(flat), 0)
    with pytest.raises(DataError):
        PixelMouthProbe.fit(flat[:2], np.zeros(2))
    assert pearson(np.ones(4), np.arange(4)) == 0.0
