"""Behaviour unchanged: a seeded CPU demo fold, with every config key spelled out, writes the same `oof.csv` and
`submission.csv` as the reference in `tests/data/behaviour/`, made before the issue 12 split (commit 6bac502).

Regenerate the reference (only on purpose, when behaviour is meant to change) with
`python tests/test_behaviour.py tests/data/behaviour` and say why in the commit."""
import hashlib, json, os, sys, tempfile
from pathlib import Path

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
os.environ['OMP_NUM_THREADS'] = '1'
import numpy as np, pandas as pd, pytest, torch

REF = Path(__file__).parent / 'data' / 'behaviour'
PROBS = [f'p{c}' for c in range(18)]
# Every key that changes results, spelled out, so that a later change of a default does not move the reference.
CONFIG = dict(extra_data=[], boxes_csv='', fold=0, n_folds=5, model='tf_efficientnet_lite0', pretrained=False,
              head='multi', loss='focal', optimizer='adamw', lr=2e-3, weight_decay=1e-2, momentum=0.9,
              scheduler='cosine', epochs=2, batch_size=8, img_size=48, crop_aspect=0.75, crop_margin=0.25,
              augment='light', tta='hflip', amp=True, seed=42, num_workers=0, age_old_from=60, drop_boundary_ages=[],
              sampler='random', mix='none', arc_s=30.0, arc_m=0.4, focal_gamma=2.0, smoothing=0.0, patience=5,
              grad_clip=5.0, augment_on='cpu', tensorboard=False,
              drop_rate=0.2)  # a key since the split; at 6bac502 `create_model` hard-coded this dropout
N_PEOPLE = 12  # the demo set: 12 training people (84 photos), 20 eval people (140 photos)
# Two runs of the same code on the same machine (one thread) gave identical files (max |difference| 0), and the
# probabilities are written with full float precision; the tolerance only absorbs last-bit changes of summation order.
ATOL = 1e-5


def data_digest(root: Path) -> str:
    "A hash of the demo set's files (names and bytes): the reference holds only for these inputs."
    h = hashlib.sha256()
    for p in sorted(f for f in root.rglob('*') if f.is_file()):
        h.update(str(p.relative_to(root)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


def run_reference(outputs: Path) -> tuple[Path, str]:
    "Run the reference fold with its outputs under `outputs`; returns (fold folder, digest of the demo data)."
    os.environ['MASKCLF_OUTPUTS'] = str(outputs)
    torch.set_num_threads(1)
    from maskclf.demo import demo_data_dir
    from maskclf.learn import run_fold
    data = demo_data_dir(n_people=N_PEOPLE)
    r = run_fold(dict(CONFIG, data_dir=str(data), run='behaviour'))
    return Path(r['fold_dir']), data_digest(data)


def comparable(fold_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    "(oof, submission) with paths made relative to the data folder (they hold the temp folder)."
    oof = pd.read_csv(fold_dir / 'oof.csv')
    oof['path'] = oof.path.map(lambda p: '/'.join(Path(p).parts[-2:]))
    return oof, pd.read_csv(fold_dir / 'submission.csv', dtype={'ImageID': str})


@pytest.fixture(scope='module')
def rerun():
    saved = os.environ.get('MASKCLF_OUTPUTS')
    with tempfile.TemporaryDirectory() as d:
        try:
            fold_dir, digest = run_reference(Path(d))
            yield (*comparable(fold_dir), digest)
        finally:
            if saved is None: os.environ.pop('MASKCLF_OUTPUTS', None)
            else: os.environ['MASKCLF_OUTPUTS'] = saved


def test_same_demo_data(rerun):
    "The inputs are those of the reference (else a failure below would be about maskclf.demo, not the training code)."
    want = json.loads((REF / 'made.json').read_text())['demo_digest']
    assert rerun[2] == want, 'the demo data changed (maskclf.demo): regenerate the reference as the module docstring says'


def test_same_oof(rerun):
    oof, ref = rerun[0], pd.read_csv(REF / 'oof.csv')
    assert list(oof.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(oof.drop(columns=PROBS), ref.drop(columns=PROBS))
    np.testing.assert_allclose(oof[PROBS].to_numpy(), ref[PROBS].to_numpy(), atol=ATOL, rtol=0)
    assert (oof[PROBS].to_numpy().argmax(1) == ref[PROBS].to_numpy().argmax(1)).all()


def test_same_submission(rerun):
    pd.testing.assert_frame_equal(rerun[1], pd.read_csv(REF / 'submission.csv', dtype={'ImageID': str}))


if __name__ == '__main__':  # python tests/test_behaviour.py DEST: write the reference to DEST
    import subprocess
    dest = Path(sys.argv[1]); dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        fold_dir, digest = run_reference(Path(d))
        oof, sub = comparable(fold_dir)
        oof.to_csv(dest / 'oof.csv', index=False); sub.to_csv(dest / 'submission.csv', index=False)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    (dest / 'made.json').write_text(json.dumps(dict(commit=commit, demo_digest=digest, config=CONFIG,
                                                    n_people=N_PEOPLE, torch=torch.__version__), indent=1) + '\n')
