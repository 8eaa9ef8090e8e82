#!/usr/bin/env python3
"""Independent numpy (float64) reference for two-pass SAM-family steps.

Network: Linear(3->4) -> BatchNorm1d(4, training) -> ReLU -> Linear(4->2), MSE loss
(mean over all elements). Forward and backward written by hand (no autodiff);
the backward is verified against central finite differences.

Each step (same batch, two steps per method):
  pass 1: g = dL/dw at w            (updates BN running stats, Burn convention:
                                     running = 0.9*running + 0.1*batch_stat with
                                     the BIASED batch variance for running_var)
  eps    = perturbation(g, w)
  pass 2: g_adv = dL/dw at w+eps     (batch stats of pass 2; running stats NOT updated)
  SGD (lr 0.1, momentum 0.9, dampening 0, weight decay 1e-3 PyTorch-style) at the
  ORIGINAL w with g_adv.

Writes scripts/reference_two_pass.out.json next to this file.
"""
import json
import os

import numpy as np

NAMES = ["W1", "b1", "gamma", "beta", "W2", "b2"]
WEIGHT_NAMES = {"W1", "gamma", "W2"}  # ASAM "weight" tensors (adaptive scaling)
BN_EPS = 1e-5
MOMENTUM_BN = 0.1
LR = 0.1
MOMENTUM = 0.9
WD = 1e-3
RHO = 0.05
XI = 1e-12
FISHER_ETA = 1.0
ASAM_ETA = 0.01

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-0.2, 0.8, 0.1], [1.0, 1.0, -1.5]],
             dtype=np.float64)
Y = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 2.0]], dtype=np.float64)


def init_params():
    W1 = np.array([[0.1 * ((i * 4 + j) % 7) - 0.3 for j in range(4)] for i in range(3)],
                  dtype=np.float64)
    b1 = np.array([0.01, -0.02, 0.03, 0.0], dtype=np.float64)
    gamma = np.array([1.0, 0.9, 1.1, 1.2], dtype=np.float64)
    beta = np.array([0.0, 0.1, -0.1, 0.05], dtype=np.float64)
    W2 = np.array([[0.2 * ((i * 2 + j) % 5) - 0.4 for j in range(2)] for i in range(4)],
                  dtype=np.float64)
    b2 = np.array([0.05, -0.05], dtype=np.float64)
    return {"W1": W1, "b1": b1, "gamma": gamma, "beta": beta, "W2": W2, "b2": b2}


def forward(p, x=X, y=Y):
    """Returns loss, cache, batch mean, batch biased variance."""
    h = x @ p["W1"] + p["b1"]
    mu = h.mean(axis=0)
    var = ((h - mu) ** 2).mean(axis=0)  # biased / population variance
    inv_std = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (h - mu) * inv_std
    z = p["gamma"] * xhat + p["beta"]
    a = np.maximum(z, 0.0)
    out = a @ p["W2"] + p["b2"]
    diff = out - y
    loss = float(np.mean(diff ** 2))
    cache = dict(x=x, xhat=xhat, inv_std=inv_std, z=z, a=a, diff=diff)
    return loss, cache, mu, var


def backward(p, c):
    x, xhat, inv_std, z, a, diff = (c[k] for k in ("x", "xhat", "inv_std", "z", "a", "diff"))
    n = x.shape[0]
    dout = 2.0 * diff / diff.size
    dW2 = a.T @ dout
    db2 = dout.sum(axis=0)
    da = dout @ p["W2"].T
    dz = da * (z > 0.0)
    dgamma = (dz * xhat).sum(axis=0)
    dbeta = dz.sum(axis=0)
    dxhat = dz * p["gamma"]
    # batch-norm backward through batch mean and biased variance
    dh = (inv_std / n) * (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    dW1 = x.T @ dh
    db1 = dh.sum(axis=0)
    return {"W1": dW1, "b1": db1, "gamma": dgamma, "beta": dbeta, "W2": dW2, "b2": db2}


def loss_and_grad(p):
    loss, cache, mu, var = forward(p)
    return loss, backward(p, cache), mu, var, cache


def gnorm(d):
    return float(np.sqrt(sum(float(np.sum(v * v)) for v in d.values())))


def fd_check(p, h=1e-5):
    """Central finite differences (step h) of the hand-written backward.

    Returns (max elementwise rel err, max |grad b1| (analytic or FD), min |z|).
    Elementwise rel err = |ana-num| / max(|ana|, |num|) over every parameter except b1.
    dL/db1 is structurally zero (BatchNorm subtracts the batch mean, removing any
    dependence on b1), so both values there are pure roundoff; b1 is checked with an
    absolute bound instead. min |z| (pre-ReLU) shows no point sits on a ReLU kink."""
    _, g, _, _, cache = loss_and_grad(p)
    min_abs_z = float(np.min(np.abs(cache["z"])))
    max_rel = 0.0
    b1_abs = 0.0
    for k in NAMES:
        num = np.zeros_like(p[k])
        for idx in np.ndindex(p[k].shape):
            q = {kk: vv.copy() for kk, vv in p.items()}
            q[k][idx] += h
            lp = forward(q)[0]
            q[k][idx] -= 2 * h
            lm = forward(q)[0]
            num[idx] = (lp - lm) / (2 * h)
        ana = g[k]
        if k == "b1":
            b1_abs = max(b1_abs, float(np.max(np.abs(ana))), float(np.max(np.abs(num))))
            continue
        rel = np.abs(ana - num) / np.maximum(np.abs(ana), np.abs(num))
        max_rel = max(max_rel, float(np.max(rel)))
    return max_rel, b1_abs, min_abs_z


def perturbation(method, g, w, rho):
    if method == "sam":
        n = gnorm(g)
        return {k: rho * g[k] / (n + XI) for k in NAMES}
    if method == "msam":
        n = gnorm(g)
        return {k: rho * g[k] / (n * np.sqrt(1.0 + n * n) + XI) for k in NAMES}
    if method == "fisher":
        hh = {k: g[k] / (1.0 + FISHER_ETA * g[k] ** 2) for k in NAMES}
        s = sum(float(np.sum(g[k] * hh[k])) for k in NAMES)
        return {k: rho * hh[k] / (np.sqrt(s) + XI) for k in NAMES}
    if method == "asam":
        t = {k: (np.abs(w[k]) + ASAM_ETA) if k in WEIGHT_NAMES else np.ones_like(w[k])
             for k in NAMES}
        n = gnorm({k: t[k] * g[k] for k in NAMES})
        return {k: rho * t[k] ** 2 * g[k] / (n + XI) for k in NAMES}
    raise ValueError(method)


def tolist(a):
    return [tolist(v) for v in a] if isinstance(a, np.ndarray) and a.ndim > 0 else float(a)


def run(method, rho=RHO, steps=2):
    w = init_params()
    run_mean = np.zeros(4)
    run_var = np.ones(4)
    vel = None
    out = {}
    fd_errs = []
    for s in range(1, steps + 1):
        # pass 1 (counted: updates running stats)
        loss1, g, mu, var, _ = loss_and_grad(w)
        run_mean = (1 - MOMENTUM_BN) * run_mean + MOMENTUM_BN * mu
        run_var = (1 - MOMENTUM_BN) * run_var + MOMENTUM_BN * var
        fd_errs.append(fd_check(w))
        if method == "sgd":
            g_use = g
            eps_norm = 0.0
        else:
            eps = perturbation(method, g, w, rho)
            eps_norm = gnorm(eps)
            w_adv = {k: w[k] + eps[k] for k in NAMES}
            # pass 2 (not counted: running stats untouched)
            _, g_use, _, _, _ = loss_and_grad(w_adv)
            fd_errs.append(fd_check(w_adv))
        d = {k: g_use[k] + WD * w[k] for k in NAMES}
        if vel is None:
            vel = {k: d[k].copy() for k in NAMES}
        else:
            vel = {k: MOMENTUM * vel[k] + d[k] for k in NAMES}
        w = {k: w[k] - LR * vel[k] for k in NAMES}
        rec = {k: tolist(w[k]) for k in NAMES}
        rec["running_mean"] = tolist(run_mean)
        rec["running_var"] = tolist(run_var)
        rec["loss_pass1"] = loss1
        rec["epsilon_norm"] = eps_norm
        out[f"step{s}"] = rec
    return out, fd_errs


def main():
    results = {}
    all_fd = []
    for name, method, rho in [("sgd", "sgd", RHO), ("sam", "sam", RHO), ("msam", "msam", RHO),
                              ("fisher", "fisher", RHO), ("asam", "asam", RHO),
                              ("sam_rho0", "sam", 0.0)]:
        results[name], fd = run(method, rho)
        all_fd.extend(fd)

    max_rel = max(e[0] for e in all_fd)
    b1_abs = max(e[1] for e in all_fd)
    min_z = min(e[2] for e in all_fd)
    print(f"finite-difference check (central, h=1e-5) at {len(all_fd)} points (w and w+eps):")
    print(f"  max elementwise rel err (all params but b1) = {max_rel!r}")
    print(f"  max |dL/db1| analytic or FD (structurally 0) = {b1_abs!r}")
    print(f"  min |pre-ReLU z| at checked points           = {min_z!r}")
    assert max_rel < 1e-6, max_rel
    assert b1_abs < 1e-9, b1_abs

    # sam with rho=0 must equal sgd
    for s in ("step1", "step2"):
        for k in NAMES + ["running_mean", "running_var", "loss_pass1"]:
            a = np.array(results["sgd"][s][k])
            b = np.array(results["sam_rho0"][s][k])
            assert np.array_equal(a, b), (s, k, a, b)
    print("sam_rho0 == sgd exactly: OK")

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "reference_two_pass.out.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)  # json uses repr -> full precision
    print(f"wrote {path}")

    for name, r in results.items():
        print(f"{name}:")
        for s in ("step1", "step2"):
            st = r[s]
            print(f"  {s}: loss_pass1={st['loss_pass1']!r} epsilon_norm={st['epsilon_norm']!r}")
            print(f"         W2[0]={st['W2'][0]!r} b2={st['b2']!r}")
            print(f"         running_mean={st['running_mean']!r}")
            print(f"         running_var={st['running_var']!r}")


if __name__ == "__main__":
    main()

# ---------------------------------------------------------------------------
# printed output (python3 scripts/reference_two_pass.py, numpy 2.4.6):
# ---------------------------------------------------------------------------
# finite-difference check (central, h=1e-5) at 22 points (w and w+eps):
#   max elementwise rel err (all params but b1) = 3.2062957677695265e-07
#   max |dL/db1| analytic or FD (structurally 0) = 2.2204460492503128e-11
#   min |pre-ReLU z| at checked points           = 0.08057944668570693
# sam_rho0 == sgd exactly: OK
# wrote /work/main/scripts/reference_two_pass.out.json
# sgd:
#   step1: loss_pass1=1.3231776714761785 epsilon_norm=0.0
#          W2[0]=[-0.4121450214173387, -0.12578326622636815] b2=[0.06802922976113897, 0.06026648395289427]
#          running_mean=[-0.016749999999999998, -0.010249999999999999, 0.004250000000000004, -0.008499999999999994]
#          running_var=[0.909981875, 0.907756875, 0.905826875, 0.9125525]
#   step2: loss_pass1=0.853127101715605 epsilon_norm=0.0
#          W2[0]=[-0.4359970378111588, -0.0012262837756535222] b2=[0.0990259490824762, 0.24666615974680314]
#          running_mean=[-0.030259734791450478, -0.019139095300589014, 0.004183009544355999, -0.016116608181760698]
#          running_var=[0.8309122771260995, 0.8251766480744113, 0.8187715794915963, 0.8338760652384295]
# sam:
#   step1: loss_pass1=1.3231776714761785 epsilon_norm=0.04999999999997701
#          W2[0]=[-0.4109293707354855, -0.122650963034417] b2=[0.06943190827809403, 0.06500413688750346]
#          running_mean=[-0.016749999999999998, -0.010249999999999999, 0.004250000000000004, -0.008499999999999994]
#          running_var=[0.909981875, 0.907756875, 0.905826875, 0.9125525]
#   step2: loss_pass1=0.876281657091911 epsilon_norm=0.04999999999997702
#          W2[0]=[-0.4350726215612091, 0.007303197623377888] b2=[0.10108579766037223, 0.25919891216573326]
#          running_mean=[-0.030162027408765904, -0.01913998616174878, 0.0049006952855779155, -0.016113042224990118]
#          running_var=[0.831128900393942, 0.8251762447849824, 0.8191168352685636, 0.8338793886708041]
# msam:
#   step1: loss_pass1=1.3231776714761785 epsilon_norm=0.020895795666726284
#          W2[0]=[-0.41166663826548416, -0.12445565339156096] b2=[0.0686055055536285, 0.062257925238594566]
#          running_mean=[-0.016749999999999998, -0.010249999999999999, 0.004250000000000004, -0.008499999999999994]
#          running_var=[0.909981875, 0.907756875, 0.905826875, 0.9125525]
#   step2: loss_pass1=0.8640625096111837 epsilon_norm=0.020162424104778785
#          W2[0]=[-0.436033522462229, 0.0026049785642111994] b2=[0.09946211526660557, 0.25213812390362506]
#          running_mean=[-0.03021491588897645, -0.019137869914247208, 0.004487734424123354, -0.0161151364916522]
#          running_var=[0.8310066875879839, 0.8251783488757259, 0.8189071515536654, 0.8338774336022899]
# fisher:
#   step1: loss_pass1=1.3231776714761785 epsilon_norm=0.04088095530186596
#          W2[0]=[-0.41089731850912126, -0.12332455033793445] b2=[0.06925134096935878, 0.06368074280456362]
#          running_mean=[-0.016749999999999998, -0.010249999999999999, 0.004250000000000004, -0.008499999999999994]
#          running_var=[0.909981875, 0.907756875, 0.905826875, 0.9125525]
#   step2: loss_pass1=0.8722939073488252 epsilon_norm=0.040017012408185934
#          W2[0]=[-0.4348065123789584, 0.005973898707501105] b2=[0.10080157646605457, 0.2565458705005468]
#          running_mean=[-0.030172793438799465, -0.01913608430958145, 0.00474677172448048, -0.016113527113411918]
#          running_var=[0.8311301204903888, 0.8251823882784217, 0.8190429072524121, 0.8338789977039998]
# asam:
#   step1: loss_pass1=1.3231776714761785 epsilon_norm=0.048392228972719636
#          W2[0]=[-0.41226848178748676, -0.12233573564503597] b2=[0.0683830073499509, 0.0654471789229507]
#          running_mean=[-0.016749999999999998, -0.010249999999999999, 0.004250000000000004, -0.008499999999999994]
#          running_var=[0.909981875, 0.907756875, 0.905826875, 0.9125525]
#   step2: loss_pass1=0.8427237708062214 epsilon_norm=0.04707048362865546
#          W2[0]=[-0.43631885852488644, 0.007217040985031065] b2=[0.09997801107748999, 0.26039182039132625]
#          running_mean=[-0.0302288269811429, -0.01917221881950479, 0.004212491413809182, -0.016115966497758347]
#          running_var=[0.8309618206096869, 0.8251422945660665, 0.8187697412076047, 0.8338766235056511]
# sam_rho0:
#   step1: loss_pass1=1.3231776714761785 epsilon_norm=0.0
#          W2[0]=[-0.4121450214173387, -0.12578326622636815] b2=[0.06802922976113897, 0.06026648395289427]
#          running_mean=[-0.016749999999999998, -0.010249999999999999, 0.004250000000000004, -0.008499999999999994]
#          running_var=[0.909981875, 0.907756875, 0.905826875, 0.9125525]
#   step2: loss_pass1=0.853127101715605 epsilon_norm=0.0
#          W2[0]=[-0.4359970378111588, -0.0012262837756535222] b2=[0.0990259490824762, 0.24666615974680314]
#          running_mean=[-0.030259734791450478, -0.019139095300589014, 0.004183009544355999, -0.016116608181760698]
#          running_var=[0.8309122771260995, 0.8251766480744113, 0.8187715794915963, 0.8338760652384295]
