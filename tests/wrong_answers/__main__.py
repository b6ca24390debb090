"""Print the counts per exercise set: python -m tests.wrong_answers [name ...]"""
import sys
import time

import torch

torch.set_num_threads(1)

from tests.wrong_answers import all_sets

total = [0] * 6
print(f"{'set':24s} {'lesson':6s} {'wrong':>5s} {'rejected':>8s} {'diagnosed':>9s} {'misnamed':>8s} {'right':>5s} {'accepted':>8s}")
for s in all_sets():
    if len(sys.argv) > 1 and s.name not in sys.argv[1:]:
        continue
    t = time.time()
    outs = [s.run(a) for a in s.wrongs]
    acc = [s.run(a) for a in s.rights]
    row = [len(outs), sum(o.rejected for o in outs), sum(o.diagnosed for o in outs), sum(o.wrongly_named for o in outs),
           len(acc), sum(not o.rejected and o.message.startswith("not rejected") for o in acc)]
    total = [a + b for a, b in zip(total, row)]
    print(f"{s.name:24s} {s.lesson:6s} {row[0]:5d} {row[1]:8d} {row[2]:9d} {row[3]:8d} {row[4]:5d} {row[5]:8d}   ({time.time() - t:.1f} s)")
    for a, o in zip(s.wrongs, outs):
        if not o.diagnosed:
            print(f"    - {a.label}: expected {a.diagnosis!r}\n      " + o.message.replace("\n", "\n      "))
    for a, o in zip(s.rights, acc):
        if o.rejected:
            print(f"    - correct answer {a.label} rejected:\n      " + o.message.replace("\n", "\n      "))
print(f"{'total':31s} {total[0]:5d} {total[1]:8d} {total[2]:9d} {total[3]:8d} {total[4]:5d} {total[5]:8d}")
