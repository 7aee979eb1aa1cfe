"""Part annotation by voting on labelled photos."""

import numpy as np

from fit3dmm.datasets import image_mask_pairs
from fit3dmm.models import PART_NAMES
from fit3dmm.models.annotate import annotate, parts_from_votes
from fit3dmm.models.ict import EYEBALLS, FACE


def test_parts_from_votes_needs_enough_votes_and_a_part_winner():
    votes = np.array([[6, 0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 2, 9]])
    assert parts_from_votes(votes, min_votes=5).tolist() == [0, -1, -1]


def test_voting_on_photos_labels_irises_as_the_right_eye(ict_model, shared_dir):
    root = shared_dir / "data" / "celebamask-hq"
    pairs = image_mask_pairs(root / "images", root / "masks")[:3]
    result = annotate(ict_model, pairs, min_votes=2)
    assert result.photos_used == 3 and not result.failures
    # ICT's first eyeball is the subject's left (x > 0); its iris (the last 800 of its 1570 vertices).
    offset = FACE[1] - FACE[0]
    left_iris = np.arange(offset + 770, offset + 1570)
    right_iris = left_iris + (EYEBALLS[1] - EYEBALLS[0]) // 2
    assert ict_model.data.mean[left_iris, 0].min() > 0 > ict_model.data.mean[right_iris, 0].max()
    for ids, name, other in ((left_iris, "left_eye", "right_eye"), (right_iris, "right_eye", "left_eye")):
        labelled = result.parts[ids][result.parts[ids] >= 0]
        assert len(labelled) > 50
        # Mostly this eye (3 photos: 90-95% measured; the rest is lid-edge skin), never the other one.
        assert (labelled == PART_NAMES.index(name)).mean() > 0.8
        assert not (labelled == PART_NAMES.index(other)).any()
    # The vote ignores the model's existing annotation: vertices outside it (ears, scalp) were seen too.
    assert result.votes[ict_model.data.parts < 0].sum() > 1000
