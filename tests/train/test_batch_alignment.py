
from trajdistill.train.batch import TrainSequence, collate


def test_student_and_teacher_positions_predict_the_same_response_tokens():
    seqs = [
        TrainSequence(student_prompt=[1, 2, 3], response=[7, 8], teacher_prompt=[1, 2, 3, 4, 5, 6]),
        TrainSequence(student_prompt=[1], response=[9, 10, 11], teacher_prompt=[4, 4]),
    ]
    b = collate(seqs, pad_id=0)
    assert b.targets.tolist() == [7, 8, 9, 10, 11]
    assert b.seq_index.tolist() == [0, 0, 1, 1, 1]
    for view in (b.student, b.teacher):
        # the token at the predicting position + 1 is the target itself
        nxt = view.input_ids[view.rows, view.cols + 1]
        assert nxt.tolist() == b.targets.tolist()
        assert bool(view.attention_mask[view.rows, view.cols].all())
    assert b.student.input_ids.shape == (2, 5) and b.teacher.input_ids.shape == (2, 8)
    assert b.lengths.tolist() == [2, 3]


def test_padding_is_masked_out():
    b = collate([TrainSequence([1, 2], [3]), TrainSequence([1, 2, 3, 4], [5, 6])], pad_id=0)
    assert b.teacher is None
    assert b.student.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert b.sample_weights.tolist() == [1.0, 1.0]


def test_empty_response_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="at least one response token"):
        collate([TrainSequence([1], [])], pad_id=0)


# -- method-specific extras, collated by key --------------------------------------------------------

def test_extras_collate_by_key_with_fills_for_sequences_without_them():
    import pytest
    import torch

    from trajdistill.train.batch import Extra

    per_token = Extra("test.per_token", per="token", dtype=torch.float64, fill=-1.0)
    flag = Extra("test.flag", per="sample", dtype=torch.bool, fill=False)
    seqs = [TrainSequence([1, 2], [3, 4]), TrainSequence([1], [5, 6, 7]), TrainSequence([1], [8])]
    per_token.set(seqs[1], torch.tensor([0.5, 1.5, 2.5], dtype=torch.float32))
    flag.set(seqs[2], True)
    b = collate(seqs, pad_id=0)
    assert per_token.of(b).dtype == torch.float64
    assert per_token.of(b).tolist() == [-1.0, -1.0, 0.5, 1.5, 2.5, -1.0]  # the order of b.targets
    assert flag.of(b).tolist() == [False, False, True]
    rows, mask = b.per_row(per_token)
    assert rows.tolist() == [[-1.0, -1.0, 0.0], [0.5, 1.5, 2.5], [-1.0, 0.0, 0.0]]
    assert mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert flag.get(seqs[0]) is None and flag.get(seqs[0], False) is False
    assert per_token.of(collate(seqs[:1], pad_id=0)) is None  # no sequence has it: none

    with pytest.raises(ValueError, match="one entry|response's length 2"):
        per_token.set(seqs[0], torch.ones(3))
    with pytest.raises(ValueError, match="per sample"):
        flag.set(seqs[0], torch.ones(2))
    seqs[0].extras["test.unregistered"] = 1.0
    with pytest.raises(KeyError, match="not registered"):
        collate(seqs, pad_id=0)
    with pytest.raises(ValueError, match="already registered"):
        Extra("test.flag", per="token", dtype=torch.bool)
