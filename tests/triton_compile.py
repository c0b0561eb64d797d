"""Compile every Triton kernel to a GPU binary (sm_90 cubin) for the option combinations below, with no
GPU present: Triton's own compiler, front end to ptxas. Each twice: with the integer arguments (T, M, the
truncation) as run-time values, and as Triton's launcher passes an integer equal to 1 (T = 1, M = 1: batch
1 of one neuron), a compile-time constant. Run by tests/test_triton.py in a process without TRITON_INTERPRET
(which would hand the kernels to the interpreter instead). Prints one line per kernel."""

import itertools
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from snnrun.core import triton_ops as T

POINTERS = {
    "_lif_forward": "cur beta thr mem spk",
    "_lif_backward": "mem grad_spk grad_mem beta thr grad_in acc_beta acc_th consts",
    "_leaky_forward": "cur out consts",
    "_leaky_backward": "grad out consts",
    "_recurrent_forward": "cur beta th0 weight mem spk thr consts",
    "_recurrent_backward": "mem thr grad_spk grad_mem beta th0 weight grad_in acc_beta acc_th acc_w consts",
}
FLAGS = (False, True)
OPTIONS = {
    "_lif_forward": [dict(RESET=r, RECTIFY=f) for r, f in itertools.product(range(3), FLAGS)],
    "_lif_backward": [dict(RESET=r, RESET_PATH=f, KIND=k, HAS_GS=f, HAS_GM=not f, NEED_BETA=f, NEED_TH=not f)
                      for r, f, k in itertools.product(range(3), FLAGS, range(7))],
    "_leaky_forward": [{}],
    "_leaky_backward": [{}],
    "_recurrent_forward": [dict(RESET=r, RECTIFY=f, ONE_TO_ONE=o, ADAPTIVE=a)
                           for r, f, o, a in itertools.product(range(3), FLAGS, FLAGS, FLAGS)],
    "_recurrent_backward": [dict(RESET=r, DETACH_RESET=d, KIND=k, ONE_TO_ONE=o, ADAPTIVE=a, HAS_GS=d, HAS_GM=not d,
                                 NEED_BETA=o, NEED_TH=a, NEED_W=o)
                            for r, d, k, o, a in itertools.product(range(3), FLAGS, (0, 4), FLAGS, FLAGS)],
}


def main(dtype: str) -> None:
    target = GPUTarget("cuda", 90, 32)
    for name, pointers in POINTERS.items():
        fn = getattr(T, name)
        integers = [a for a in fn.arg_names if a.islower() and a not in pointers.split()]
        for flags, ones in itertools.product(OPTIONS[name], FLAGS):
            constexprs = {**flags, "BLOCK": T.BLOCK, **({a: 1 for a in integers} if ones else {})}
            signature = {a: ("constexpr" if a in constexprs else f"*{dtype}" if a in pointers.split() else "i32")
                         for a in fn.arg_names}
            src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
            assert "cubin" in triton.compile(src, target=target).asm
        print(name, len(OPTIONS[name]), "compiled", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fp32")
