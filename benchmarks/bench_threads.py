"""Why kdnb runs torch with one thread on a small CPU: time the book's typical training steps with 1 and 2 threads,
with the machine idle and with the other core busy (as it is while a book build or a test run does other work).

Prints milliseconds per step and the ratio t(2 threads) / t(1 thread): above 1 means one thread is faster.
Each configuration runs in a fresh process, because torch fixes some threading state at first use.
"""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

CASES = ["student MLP 64-16-10, 1257 rows", "teacher MLP 64-256-256-10, batch 128", "DigitsCNN, batch 128",
         "KD loss on 1257x10 logits"]

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from kdnb.core.models import MLP, DigitsCNN
from kdnb.core.losses import kd_loss
g = torch.Generator().manual_seed(0)
x, y = torch.randn(1257, 64, generator=g), torch.randint(0, 10, (1257,), generator=g)
zt = torch.randn(1257, 10, generator=g)

def step_timer(model, xb, yb, steps):
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    def step():
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(xb), yb).backward(); opt.step()
    for _ in range(5): step()
    t = time.perf_counter()
    for _ in range(steps): step()
    return (time.perf_counter() - t) / steps * 1e3

def loss_timer(steps=200):
    zs = torch.randn(1257, 10, generator=g, requires_grad=True)
    for _ in range(5): kd_loss(zs, zt, y, rho=0.5, temperature=4.0).backward()
    t = time.perf_counter()
    for _ in range(steps): kd_loss(zs, zt, y, rho=0.5, temperature=4.0).backward()
    return (time.perf_counter() - t) / steps * 1e3

print(json.dumps([
    step_timer(MLP(64, (16,), 10, generator=g), x, y, 200),
    step_timer(MLP(64, (256, 256), 10, generator=g), x[:128], y[:128], 100),
    step_timer(DigitsCNN(generator=g), x[:128], y[:128], 30),
    loss_timer(),
]))
"""


def burn(stop):
    while not stop.is_set():
        pass


def measure(threads):
    out = subprocess.run([sys.executable, "-c", WORKER, str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    print(f"cores: {os.cpu_count()}")
    for condition in ("idle", "other core busy"):
        stop = mp.Event()
        burner = mp.Process(target=burn, args=(stop,)) if condition != "idle" else None
        if burner:
            burner.start()
            time.sleep(0.5)
        try:
            one, two = measure(1), measure(2)
        finally:
            if burner:
                stop.set()
                burner.join()
        print(f"\n{condition}:")
        print(f"{'case':40s} {'1 thread (ms)':>14s} {'2 threads (ms)':>15s} {'t2/t1':>7s}")
        for case, a, b in zip(CASES, one, two):
            print(f"{case:40s} {a:14.2f} {b:15.2f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
