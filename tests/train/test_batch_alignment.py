
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
