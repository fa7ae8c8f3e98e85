"""LFW lists for the deployment check (docs/results.md): the gallery (first photo of N
people with two or more photos), probes (their second photo, plus the only photo of N
single-photo people as distractors) and a calibration set (N further single-photo people,
not enrolled). Every line is ``name<TAB>path``; shuffles are seeded (random.Random(0)).

    python benchmarks/tools/lfw_gallery_lists.py ../shared/data/lfw-gray/images work/n300 300
"""
import os
import random
import sys


def main() -> None:
    lfw, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    people = sorted(os.listdir(lfw))
    imgs = {p: sorted(os.listdir(os.path.join(lfw, p))) for p in people}
    multi = [p for p in people if len(imgs[p]) >= 2]
    single = [p for p in people if len(imgs[p]) == 1]
    rng = random.Random(0)
    rng.shuffle(multi)
    rng.shuffle(single)
    enrolled, distract, calib = multi[:n], single[:n], single[n:2 * n]
    os.makedirs(out, exist_ok=True)

    def write(name, rows):
        with open(os.path.join(out, name), "w", encoding="utf-8") as fh:
            fh.writelines(f"{a}\t{os.path.join(lfw, a, b)}\n" for a, b in rows)

    write("gallery.tsv", [(p, imgs[p][0]) for p in enrolled])
    write("probes.tsv", [(p, imgs[p][1]) for p in enrolled] + [(p, imgs[p][0]) for p in distract])
    write("calibration.tsv", [(p, imgs[p][0]) for p in calib])


if __name__ == "__main__":
    main()
