"""Nothing lost: a diverging or interrupted run keeps its completed rounds, and a checkpointed
run resumes to exactly the result of an uninterrupted one."""
import pandas as pd
import pytest
import torch

import fedlab_utils as flu


def federation(seed=0, sizes=(9, 14, 6, 11, 8)):
    g = torch.Generator().manual_seed(seed)
    clients = []
    for i, n in enumerate(sizes):
        X = torch.randn(n, 4, generator=g, dtype=torch.float64) + i * 0.3
        clients.append((X, torch.randint(0, 3, (n,), generator=g)))
    return flu.data.Federation.from_clients(clients, test=clients)


def model():
    return flu.models.mlp(4, 6, 3, dtype=torch.float64, seed=1)


ARGS = dict(algorithm="scaffold", local_steps=[2, 3, 1, 2, 4], client_lr=0.1, batch_size=4, clients_per_round=3,
            seed=11, progress=False, diagnostics=True, record_params=True)


class Interrupting:
    """A constant learning rate that raises KeyboardInterrupt (Ctrl-C) when round ``at`` starts."""

    __name__ = "lr0.1"

    def __init__(self, at):
        self.at = at

    def __call__(self, rnd, step):
        if rnd == self.at:
            raise KeyboardInterrupt
        return 0.1


def assert_same_run(a, b):
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    pd.testing.assert_frame_equal(a.rounds.reset_index(drop=True), b.rounds.reset_index(drop=True), check_exact=True,
                                  check_dtype=False)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    for k in a.client_state:
        assert torch.equal(a.client_state[k], b.client_state[k]), k
    for k, v in a.server_state["algorithm"].items():
        assert torch.equal(v, b.server_state["algorithm"][k]), k
    assert len(a.trajectory) == len(b.trajectory)
    for pa, pb in zip(a.trajectory, b.trajectory):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    fed = federation()
    whole = flu.run(model(), fed, num_rounds=7, **ARGS)
    path = tmp_path / "run.pt"
    first = flu.run(model(), fed, num_rounds=3, checkpoint=path, **ARGS)
    assert first.server_state["round"] == 3 and path.exists()
    resumed = flu.run(model(), fed, num_rounds=7, checkpoint=path, resume=path, **ARGS)
    assert_same_run(resumed, whole)
    assert resumed.config["num_rounds"] == 7 and resumed.server_state["round"] == 7
    assert_same_run(flu.History.load(path), whole)  # the checkpoint was brought up to round 7


def test_ctrl_c_keeps_the_completed_rounds_and_checkpoint(tmp_path):
    fed = federation()
    args = {**ARGS, "client_lr": Interrupting(at=4)}
    path = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt) as info:
        flu.run(model(), fed, num_rounds=8, checkpoint=path, checkpoint_every=5, **args)
    hist = info.value.history
    assert hist.server_state["round"] == 3
    assert hist.metrics["round"].max() == 3 and list(hist.rounds["round"]) == [1, 2, 3]
    three = flu.run(model(), fed, num_rounds=3, **{**args, "client_lr": Interrupting(at=99)})
    for k in hist.params:
        assert torch.equal(hist.params[k], three.params[k])
    pd.testing.assert_frame_equal(hist.metrics, three.metrics, check_exact=True)
    # the interrupted run's checkpoint (written on Ctrl-C, before its every-5 schedule) resumes it
    assert flu.History.load(path).server_state["round"] == 3
    resumed = flu.run(model(), fed, num_rounds=8, checkpoint=path, resume=path,
                      **{**args, "client_lr": Interrupting(at=99)})
    whole = flu.run(model(), fed, num_rounds=8, **{**args, "client_lr": Interrupting(at=99)})
    assert_same_run(resumed, whole)


def test_divergence_carries_the_history_of_completed_rounds():
    fed = federation()

    def exploding(rnd, step):
        return 0.1 if rnd < 4 else 1e30
    exploding.__name__ = "exploding"
    with pytest.raises(FloatingPointError, match=r"round \d+") as info:
        flu.run(model(), fed, num_rounds=10, client_lr=exploding, batch_size=None, progress=False)
    failed = int(str(info.value).split()[1].rstrip(":"))
    assert failed >= 4
    hist = info.value.history
    assert hist.metrics["round"].max() == failed - 1 and list(hist.rounds["round"]) == list(range(1, failed))
    assert all(torch.isfinite(v).all() for v in hist.params.values())


def test_resume_refuses_other_arguments_and_foreign_files(tmp_path):
    fed = federation()
    path = tmp_path / "run.pt"
    flu.run(model(), fed, num_rounds=2, checkpoint=path, **ARGS)
    with pytest.raises(ValueError, match="resume.*client_lr"):
        flu.run(model(), fed, num_rounds=4, resume=path, **{**ARGS, "client_lr": 0.2})
    with pytest.raises(ValueError, match="resume.*fingerprint"):
        flu.run(model(), federation(seed=5), num_rounds=4, resume=path, **ARGS)
    with pytest.raises(ValueError, match="num_rounds"):
        flu.run(model(), fed, num_rounds=1, resume=path, **ARGS)
    with pytest.raises(ValueError, match="resume"):
        flu.run(model(), fed, num_rounds=4, resume=tmp_path / "missing.pt", **ARGS)
    plain = tmp_path / "plain.pt"
    flu.run(model(), fed, num_rounds=2, **ARGS).save(plain)
    flu.run(model(), fed, num_rounds=3, resume=plain, **ARGS)  # any saved History of the run resumes


def test_checkpoint_never_overwrites_another_file(tmp_path):
    fed = federation()
    path = tmp_path / "precious.pt"
    path.write_bytes(b"someone's work")
    with pytest.raises(ValueError, match="checkpoint"):
        flu.run(model(), fed, num_rounds=2, checkpoint=path, **ARGS)
    assert path.read_bytes() == b"someone's work"


@pytest.mark.parametrize("where", ["missing_dir/run.pt", "."])
def test_checkpoint_path_is_checked_before_round_0(tmp_path, where):
    with pytest.raises(ValueError, match="checkpoint"):
        flu.run(model(), federation(), num_rounds=2, checkpoint=tmp_path / where, **ARGS)
