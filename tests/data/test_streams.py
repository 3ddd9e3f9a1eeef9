"""Every draw of the data side comes from the package's seeded stream: the global numpy and torch
generators are neither read nor advanced."""
import numpy as np
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils import partition

Y = np.repeat(np.arange(5), 40)
X = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
FED = flu.data.federate(X, torch.as_tensor(Y), partition.iid(Y, 4, seed=0), seed=0)

CALLS = {
    "iid": lambda: partition.iid(Y, 4, seed=1),
    "dirichlet": lambda: partition.dirichlet(Y, 4, alpha=0.5, seed=1),
    "pathological": lambda: partition.pathological(Y, 4, 2, seed=1),
    "niid_bench": lambda: partition.pathological(Y, 4, 2, seed=1, scheme="niid_bench"),
    "shards": lambda: partition.shards(Y, 4, 2, seed=1),
    "quantity_skew": lambda: partition.quantity_skew(Y, 4, 1.0, seed=1),
    "inner_dirichlet": lambda: partition.inner_dirichlet(Y, 4, 1.0, seed=1),
    "federate": lambda: flu.data.federate(X, torch.as_tensor(Y), [range(100), range(100, 200)], seed=1),
    "add_noise": lambda: flu.data.add_noise(FED, 0.5, seed=1),
    "synthetic": lambda: flu.data.synthetic(num_clients=3, dim=4, seed=1),
    "k_shot": lambda: flu.fewshot.k_shot(FED, shots=2, seed=1),
    "episode": lambda: flu.fewshot.episode(X, Y, n_way=3, shots=2, seed=1),
    "split_clients": lambda: flu.fewshot.split_clients(FED, 2, seed=1),
    "base_novel_split": lambda: flu.fewshot.base_novel_split(range(10), 3, seed=1),
    "prototype_classifier": lambda: flu.fewshot.prototype_classifier(torch.nn.Identity(), FED),
}


def _fingerprint(out):
    """A comparable summary of any of the results above."""
    if isinstance(out, partition.Partition):
        return [p.tolist() for p in out]
    if isinstance(out, flu.data.Federation):
        return [t.tolist() for pair in out.train + out.test for t in pair]
    if isinstance(out, flu.data.Dataset):
        return out.X.tolist()
    if isinstance(out, flu.fewshot.FewShot):
        return _fingerprint(out.federation)
    if isinstance(out, torch.nn.Module):
        return [p.tolist() for p in out.parameters()]
    if isinstance(out, (tuple, list)):
        return [_fingerprint(o) for o in out]
    if isinstance(out, dict):
        return {k: _fingerprint(v) for k, v in out.items()}
    return np.asarray(out).tolist()


@pytest.mark.parametrize("name", CALLS)
def test_no_global_random_state(name):
    results = []
    for global_seed in (0, 1):
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
        results.append(_fingerprint(CALLS[name]()))
        assert np.array_equal(np.random.get_state()[1], np_state), "the global numpy generator moved"
        assert torch.equal(torch.get_rng_state(), torch_state), "the global torch generator moved"
    assert results[0] == results[1]  # nothing read from the global generators
