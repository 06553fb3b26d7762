"""Reference trajectories for yuanli's optimizers, from torch.optim (run with bench/.venv).

Prints Rust constants that crates/train/tests/optim_reference.rs compares against:
3 steps of each optimizer on the same parameters and gradient sequence.
Usage: bench/.venv/bin/python tools/reference/optim_reference.py
"""
import torch

torch.set_default_dtype(torch.float64)
P0 = [0.5, -1.0, 2.0, 0.0]
GRADS = [[0.1, -0.2, 0.3, 0.05], [0.4, 0.1, -0.5, 0.0], [-0.3, 0.2, 0.1, -0.05]]


def run(make):
    p = torch.nn.Parameter(torch.tensor(P0))
    opt = make([p])
    for g in GRADS:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().tolist()


cases = {
    "ADAMW": lambda ps: torch.optim.AdamW(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "ADAM_L2": lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "SGD_MOMENTUM": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "SGD_NESTEROV": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
}
print(f"// torch {torch.__version__}")
for name, make in cases.items():
    vals = ", ".join(f"{v:.12e}" for v in run(make))
    print(f"const {name}: [f64; 4] = [{vals}];")
