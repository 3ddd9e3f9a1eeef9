"""Meta-learning and personalisation speed: a user's per-client loop vs our two backends.

Workload: digits, 100 clients (Dirichlet(0.5)), MLP 64-64-10, 5 local steps of batch 8, full
participation. Two methods whose client rule is more than local SGD:

- Per-FedAvg (FO and HF, Fallah et al. 2020): per local step two (FO) or four (HF) minibatch
  gradients; the user loop is a ``copy.deepcopy`` per client and plain autograd on it;
- Ditto (Li et al. 2021): FedAvg's local SGD plus ``local_steps`` proximal steps on each client's
  personal model; the user loop keeps one personal ``nn.Module`` per client and two
  ``torch.optim.SGD`` loops per client.

All versions draw the same minibatch indices (``flu.engine.batch_plan``), so the user loop's
final global parameters equal ``flu.run``'s to rounding (printed as ``max |diff|``). Reports
median milliseconds per round and ratios measured in this same process.

    python benchmarks/meta_personal.py [--rounds 5] [--clients 100] [--threads 2]

Measured on the 2-core development machine (torch 2.13 CPU, 2 threads, other jobs running),
``--rounds 3``:

    method            version         ms/round  vs user  max |diff|
    Per-FedAvg (FO)   user loop         2650.3     1.0x
    Per-FedAvg (FO)   flu loop          3238.2     0.8x    1.86e-07
    Per-FedAvg (FO)   flu vectorized      82.1    32.3x    1.86e-07
    Per-FedAvg (HF)   user loop         5519.5     1.0x
    Per-FedAvg (HF)   flu loop          6140.4     0.9x    1.86e-07
    Per-FedAvg (HF)   flu vectorized     208.8    26.4x    1.86e-07
    Ditto (lam=0.1)   user loop         3479.3     1.0x
    Ditto (lam=0.1)   flu loop          3228.1     1.1x    1.86e-07
    Ditto (lam=0.1)   flu vectorized      95.3    36.5x    1.86e-07

The client rules are written once over stacked gradients (``ClientRound.grad``), so the
vectorised backend batches every client's inner and outer gradients; ``max |diff|`` is float32
rounding against the user loop's final global parameters.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import fedlab_utils as flu
from fedlab_utils._core.random import mix
from fedlab_utils.engine import batch_plan


def _data(fed):
    sizes = torch.as_tensor(fed.sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    X = torch.cat([x for x, _ in fed.train])
    Y = torch.cat([y for _, y in fed.train])
    return sizes, offsets, X, Y, torch.as_tensor(fed.weights(), dtype=torch.float32)


def _grad(net, params, X, Y):
    out = torch.func.functional_call(net, params, (X,))
    return torch.autograd.grad(torch.nn.functional.cross_entropy(out, Y), list(params.values()))


def user_perfedavg(model, fed, rounds, steps, lr, inner_lr, batch, variant, seed=0, delta=1e-3):
    """Per-FedAvg as a user writes it: one deepcopy per client, autograd per minibatch."""
    sizes, offsets, X, Y, p = _data(fed)
    N = fed.num_clients
    clients, tau = torch.arange(N), torch.full((N,), steps)
    glob = {k: v.detach().clone() for k, v in model.named_parameters()}
    times = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        plans = [batch_plan(sizes, offsets, clients, tau, batch, seed if d == 0 else mix(seed, d), rnd)
                 for d in range(3)]
        new = {k: torch.zeros_like(v) for k, v in glob.items()}
        for c in range(N):
            net = copy.deepcopy(model)
            w = {k: v.clone().requires_grad_() for k, v in glob.items()}
            b = min(batch, int(sizes[c]))
            for t in range(steps):
                sel = [plans[d][0][c, t][plans[d][1][c, t] > 0][:b] for d in range(3)]
                g0 = _grad(net, w, X[sel[0]], Y[sel[0]])
                tmp = {k: (v - inner_lr * g).detach().requires_grad_() for (k, v), g in zip(w.items(), g0)}
                g = _grad(net, tmp, X[sel[1]], Y[sel[1]])
                if variant == "hf":
                    plus = {k: (v + delta * gi).detach().requires_grad_() for (k, v), gi in zip(w.items(), g)}
                    minus = {k: (v - delta * gi).detach().requires_grad_() for (k, v), gi in zip(w.items(), g)}
                    hp, hm = _grad(net, plus, X[sel[2]], Y[sel[2]]), _grad(net, minus, X[sel[2]], Y[sel[2]])
                    g = [gi - inner_lr * (a - m) / (2 * delta) for gi, a, m in zip(g, hp, hm)]
                w = {k: (v - lr * gi).detach().requires_grad_() for (k, v), gi in zip(w.items(), g)}
            for k in new:
                new[k] += p[c] * w[k].detach()
        glob = new
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), glob


def user_ditto(model, fed, rounds, steps, lr, lam, batch, seed=0):
    """Ditto as a user writes it: a global deepcopy per client per round plus one persistent
    personal nn.Module per client, both trained with torch.optim.SGD."""
    sizes, offsets, X, Y, p = _data(fed)
    N = fed.num_clients
    clients, tau = torch.arange(N), torch.full((N,), steps)
    glob = copy.deepcopy(model)
    personal = [copy.deepcopy(model) for _ in range(N)]
    times = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        plans = [batch_plan(sizes, offsets, clients, tau, batch, seed if d == 0 else mix(seed, d), rnd)
                 for d in range(2)]
        states = []
        x = {k: v.detach().clone() for k, v in glob.named_parameters()}
        for c in range(N):
            local = copy.deepcopy(glob)
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            v, vopt = personal[c], torch.optim.SGD(personal[c].parameters(), lr=lr)
            for t in range(steps):
                sel = plans[0][0][c, t][plans[0][1][c, t] > 0]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(local(X[sel]), Y[sel]).backward()
                opt.step()
            for t in range(steps):
                sel = plans[1][0][c, t][plans[1][1][c, t] > 0]
                vopt.zero_grad()
                loss = torch.nn.functional.cross_entropy(v(X[sel]), Y[sel])
                loss = loss + lam / 2 * sum(((q - x[k]) ** 2).sum() for k, q in v.named_parameters())
                loss.backward()
                vopt.step()
            states.append(local.state_dict())
        glob.load_state_dict({k: sum(p[c] * states[c][k] for c in range(N)) for k in states[0]})
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), {k: v.detach() for k, v in glob.named_parameters()}


def flu_ms(model, fed, backend, rounds, steps, lr, batch, **options):
    hist = flu.run(model, fed, num_rounds=rounds, local_steps=steps, client_lr=lr, batch_size=batch,
                   backend=backend, eval_every=rounds, progress=False, **options)
    return 1000 * hist.timing.seconds.median(), hist.params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = flu.data.load_dataset("digits")
    fed = flu.data.federate(ds.X, ds.y, flu.partition.dirichlet(ds.y, args.clients, 0.5, seed=0), seed=0)
    model = flu.models.mlp(64, 64, 10, seed=0)
    R, T, lr, B = args.rounds, 5, 0.05, 8
    cases = {
        "Per-FedAvg (FO)": (lambda: user_perfedavg(model, fed, R, T, lr, 0.01, B, "fo"),
                            dict(algorithm="perfedavg", variant="fo", inner_lr=0.01)),
        "Per-FedAvg (HF)": (lambda: user_perfedavg(model, fed, R, T, lr, 0.01, B, "hf"),
                            dict(algorithm="perfedavg", variant="hf", inner_lr=0.01)),
        "Ditto (lam=0.1)": (lambda: user_ditto(model, fed, R, T, lr, 0.1, B), dict(algorithm="ditto", lam=0.1)),
    }
    print(f"{args.clients} clients, {R} rounds, {T} local steps of batch {B}, {args.threads} threads")
    print(f"{'method':17s} {'version':14s} {'ms/round':>9s} {'vs user':>8s} {'max |diff|':>11s}")
    for name, (user, options) in cases.items():
        ms_user, ref = user()
        print(f"{name:17s} {'user loop':14s} {ms_user:9.1f} {1.0:7.1f}x")
        for backend in ("loop", "vectorized"):
            ms, params = flu_ms(model, fed, backend, R, T, lr, B, **options)
            diff = max(float((params[k] - ref[k]).abs().max()) for k in ref)
            print(f"{name:17s} {'flu ' + backend:14s} {ms:9.1f} {ms_user / ms:7.1f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
