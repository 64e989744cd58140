"""Why kdnb keeps freed memory in the process (`kdnb.core.runtime.configure_allocator`): time typical steps of the book in
fresh processes with glibc's default allocator settings (KDNB_ALLOCATOR=system) and with kdnb's.

With the defaults, glibc returns every large freed block to the system, so each new tensor of a few MB is page-faulted
in again. Prints milliseconds per step and the ratio t(system) / t(kdnb): above 1 means kdnb's setting is faster.
"""

import json
import os
import subprocess
import sys

CASES = ["relu of a 2 MB float64 tensor", "chapter 2 student step (width 4096, 128 inputs, float64)",
         "chapter 1 teacher step (64-256-256-10, batch 128)", "NTK Gram, closed form (N=256, width 4096)"]

WORKER = r"""
import json, torch
from kdnb.core.runtime import configure_allocator, set_threads
configure_allocator(); set_threads()
from kdnb.core.models import MLP, NTKMLP, AntisymmetricPair
from kdnb.kernels.empirical import empirical_ntk
from kdnb.core.timing import time_call
from kdnb.core.training import distillation_objective
g = torch.Generator().manual_seed(0)

def per_step(function, steps):
    return time_call(lambda: [function() for _ in range(steps)], repeats=3) / steps * 1e3

h = torch.randn(128, 2048, dtype=torch.float64, generator=g)
student = AntisymmetricPair(NTKMLP(3, [2048], weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                                   readout_bias_variance=0.0, generator=g, dtype=torch.float64))
x3, zt = torch.randn(128, 3, dtype=torch.float64, generator=g), torch.randn(128, dtype=torch.float64, generator=g)
objective = distillation_objective(0.5, 5.0, t2_scaling=False, binary=True)
sgd = torch.optim.SGD(student.parameters(), lr=1.0)
def student_step():
    sgd.zero_grad(); objective(student(x3), zt, (zt > 0).double()).backward(); sgd.step()
teacher = MLP(64, (256, 256), 10, generator=g)
x, y = torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)
adam = torch.optim.Adam(teacher.parameters(), 1e-3)
def teacher_step():
    adam.zero_grad(); torch.nn.functional.cross_entropy(teacher(x), y).backward(); adam.step()
wide, xs = NTKMLP(64, [4096], generator=g), torch.randn(256, 64, generator=g)
print(json.dumps([per_step(lambda: torch.relu(h), 100), per_step(student_step, 20), per_step(teacher_step, 50),
                  per_step(lambda: empirical_ntk(wide, xs), 5)]))
"""


def measure(mode):
    env = dict(os.environ, KDNB_ALLOCATOR=mode)
    out = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def main():
    if not sys.platform.startswith("linux"):
        print("the allocator setting applies to Linux with glibc only; nothing to measure here")
        return
    system, kdnb = measure("system"), measure("kdnb")
    print(f"{'case':58s} {'system (ms)':>12s} {'kdnb (ms)':>10s} {'system/kdnb':>12s}")
    for case, a, b in zip(CASES, system, kdnb):
        print(f"{case:58s} {a:12.3f} {b:10.3f} {a / b:12.2f}")


if __name__ == "__main__":
    main()
