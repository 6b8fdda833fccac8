"""End-to-end tests of training: the papermill fold run, refusal to reuse a folder, NaN stop, resume,
partial-label multi-head training on real photos, and the demo F1 floor. CPU, small images."""
import ast, json, os

import numpy as np, pandas as pd, pytest, torch

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
# One thread each, here and in the papermill kernel: on a busy 2-core machine two OpenMP threads per process spin
# against the other processes and run several times slower; on an idle one the tiny models here barely notice.
os.environ['OMP_NUM_THREADS'] = '1'
torch.set_num_threads(1)
import maskclf.learn as learn
from maskclf.core import real_data, repo_root
from maskclf.learn import DEFAULT_CONFIG, NonFiniteLossError, run_fold

NB = repo_root() / 'nbs' / 'train.ipynb'
FOLD_FILES = ['config.json', 'history.csv', 'metrics.json', 'oof.csv', 'test_probs.npy', 'submission.csv', 'best.pt',
              'last.pt', 'report.html', 'learning_curves.png', 'confusion_18.png', 'confusion_heads.png',
              'class_f1.png', 'mistakes.png']
# Demo floors. Scores differ between machines: the CPU, the thread count and library versions change the float
# arithmetic, and a few validation photos turn that into large swings. So each floor sits below the lowest score
# measured over several seeds and 1 or 2 threads (README, "Scores differ between machines"); chance on 18 classes
# is about 0.056. Measured as run_fold(config, seed=s) under torch.set_num_threads(t), 2-core CPU, shared:
FLOOR_DEFAULT = 0.30  # default config, fold 4: 0.490-0.631 here (6 epochs; seeds 0, 1, 42; 1 thread), 0.520 and 0.449
                      # (seed 42); at 12 epochs 0.594 and 0.700 (2 threads, two machines) and 0.708 (1 thread), seed 42
#   on two other machines; 0.685 with soft-F1 beside focal, the default loss since 2026-12-03 (2 threads, AVX-512 EPYC)
FLOOR_SMALL = 0.04  # FLOOR_CFG on the 12-person demo, fold 0 (21 photos): macro F1 0.064-0.167
#   over seeds 42, 0, 1, 2, 3 (1 thread) and 42, 0 (2 threads); a model that predicts one class scores about 0.02
FLOOR_SMALL_MASK = 0.45  # the same runs' mask F1, the stable signal: 0.625-0.832; all-'wear' scores 0.28
TINY = dict(img_size=48, epochs=2, batch_size=8, pretrained=False, tta='none', fold=0, n_folds=5)


def test_parameters_match_defaults():
    "The notebook's parameters cell and `DEFAULT_CONFIG` hold the same keys and values (one set of defaults)."
    import papermill as pm
    params = pm.inspect_notebook(str(NB))
    assert set(params) == set(DEFAULT_CONFIG)
    for k, p in params.items(): assert ast.literal_eval(p['default']) == DEFAULT_CONFIG[k], k
    assert all(p['help'] for p in params.values())


@pytest.fixture(scope='module')
def smoke(outputs):
    "One papermill run of nbs/train.ipynb with tiny parameters."
    import papermill as pm
    d, data = outputs
    pm.execute_notebook(str(NB), str(d / 'train_smoke.ipynb'), parameters=dict(TINY, data_dir=data, run='smoke'),
                        cwd=str(repo_root()), progress_bar=False, kernel_name='python3')
    return d / 'smoke' / 'fold0', data


def test_smoke_writes_every_file(smoke):
    fold_dir, _ = smoke
    missing = [f for f in FOLD_FILES if not (fold_dir / f).exists()]
    assert not missing, missing
    m = json.loads((fold_dir / 'metrics.json').read_text())
    for k in ('f1_macro', 'f1_mask', 'f1_gender', 'f1_age', 'accuracy'): assert 0 <= m[k] <= 1, k
    oof = pd.read_csv(fold_dir / 'oof.csv')
    assert list(oof.columns[:7]) == ['path', 'person', 'label', 'mask', 'gender', 'age_band', 'fold']
    np.testing.assert_allclose(oof[[f'p{c}' for c in range(18)]].sum(axis=1), 1, atol=1e-4)
    sub = pd.read_csv(fold_dir / 'submission.csv')
    assert list(sub.columns) == ['ImageID', 'ans'] and len(sub) == len(np.load(fold_dir / 'test_probs.npy'))
    assert json.loads((fold_dir / 'config.json').read_text())['run'] == 'smoke'
    assert 'data:image/png;base64' in (fold_dir / 'report.html').read_text()
    model = learn.load_model(fold_dir / 'best.pt', 'cpu')  # rebuilt from the checkpoint's config alone
    assert not model.training


def test_second_run_refused(smoke):
    fold_dir, data = smoke
    before = sorted(p.name for p in fold_dir.iterdir())
    with pytest.raises(FileExistsError, match='overwrite'):
        run_fold(dict(TINY, data_dir=data, run='smoke'))
    assert sorted(p.name for p in fold_dir.iterdir()) == before


def test_nan_loss_stops(outputs, monkeypatch):
    "An injected NaN loss stops the run at once with a message naming epoch, step and the fixes."
    import maskclf.loss
    real = maskclf.loss.make_loss
    def nan_loss(*a, **k):
        f = real(*a, **k)
        return lambda out, y: f(out, y) * float('nan')
    monkeypatch.setattr(maskclf.loss, 'make_loss', nan_loss)
    with pytest.raises(NonFiniteLossError, match=r'epoch 0, step 0.*lower the learning rate.*amp=False'):
        run_fold(dict(TINY, data_dir=outputs[1], run='nan'))


def test_resume_continues(smoke, monkeypatch):
    "Interrupted in epoch 1, `resume=True` continues from last.pt (epoch 0) and repeats the uninterrupted smoke run."
    fold_dir, data = smoke
    real = learn.train_one_epoch
    def interrupted(*a, epoch=0, **k):
        if epoch == 1: raise KeyboardInterrupt('simulated interruption')
        return real(*a, epoch=epoch, **k)
    monkeypatch.setattr(learn, 'train_one_epoch', interrupted)
    with pytest.raises(KeyboardInterrupt): run_fold(dict(TINY, data_dir=data, run='cut'))
    d = fold_dir.parent.parent / 'cut' / 'fold0'
    assert torch.load(d / 'last.pt', weights_only=True)['epoch'] == 0 and not (d / 'metrics.json').exists()
    monkeypatch.setattr(learn, 'train_one_epoch', real)
    with pytest.raises(FileNotFoundError, match='last.pt'): run_fold(dict(TINY, data_dir=data, run='never', resume=True))
    run_fold(dict(TINY, data_dir=data, run='cut', resume=True, tta='hflip'))  # tta may change on resume: it acts at the end
    saved = json.loads((d / 'config.json').read_text())
    assert saved['tta'] == json.loads((d / 'metrics.json').read_text())['tta'] == 'hflip'  # config.json says what ran
    a, b = pd.read_csv(fold_dir / 'history.csv'), pd.read_csv(d / 'history.csv')
    assert b.epoch.tolist() == [0, 1]
    np.testing.assert_allclose(b.train_loss, a.train_loss, rtol=1e-4)
    np.testing.assert_allclose(b.val_loss, a.val_loss, rtol=1e-4)


def test_edge_mix_trains_on_the_other_framing(outputs, monkeypatch):
    "With `edge_mix`, `run_fold` gives the training loader the crops cut by the other `crop_edge` rule; without it, none."
    import maskclf.fold as fold
    seen, real = [], fold.make_recipe
    def spy(cfg, pixels, *a, other=None, **k):
        seen.append((pixels, other))
        return real(cfg, pixels, *a, other=other, **k)
    monkeypatch.setattr(fold, 'make_recipe', spy)
    cfg = learn.resolve_config(TINY, data_dir=outputs[1], epochs=1)
    df, _ = fold.load_tables(cfg)  # demo faces sit well inside their photos: box some at a corner, where the rules differ
    boxes = outputs[0] / 'corner_boxes.csv'
    pd.DataFrame({'path': df.path[:20], 'x1': 0, 'y1': 0, 'x2': 60, 'y2': 60}).to_csv(boxes, index=False)
    cfg['boxes_csv'] = str(boxes)
    for edge, mix in (('pad', 0.5), ('clamp', 0.)):
        run_fold(dict(cfg, run=f'edge_mix_{edge}', crop_edge=edge, edge_mix=mix))
    (pad_px, clamp_px), (clamp_again, none) = seen
    df, _ = fold.load_tables(cfg)
    np.testing.assert_array_equal(clamp_px, fold.get_pixels(df, dict(cfg, crop_edge='clamp')))
    np.testing.assert_array_equal(pad_px, fold.get_pixels(df, dict(cfg, crop_edge='pad')))
    assert not np.array_equal(pad_px[:20], clamp_px[:20])  # the two framings differ where the boxes are at the corner
    assert none is None and np.array_equal(clamp_again, clamp_px)


@pytest.mark.skipif(real_data('faces') is None or real_data('masks') is None, reason='needs ../shared/data/real')
def test_multihead_partial_labels_real(outputs):
    "Faces (age, gender; no mask) + masks (mask only): the multi-head model's loss falls in one short epoch."
    from maskclf.data import read_dataset
    from maskclf.loss import make_loss
    from maskclf.augment import eval_tfms
    df = read_dataset([str(real_data('faces')), str(real_data('masks'))])
    df = df.groupby('source', group_keys=False).head(48).reset_index(drop=True)  # 48 photos of each
    cfg = learn.resolve_config(img_size=64, head='multi')
    t = learn.train_targets(df)
    assert (t['label'] < 0).sum() >= 48 and (t['mask'] >= 0).all()  # mask-only rows have no 18-class label
    torch.manual_seed(0)
    model, prec = learn.build_model(cfg), learn.make_precision('cpu')
    tf = eval_tfms(learn.crop_size(cfg), model.data_config['mean'], model.data_config['std'])
    ds = learn.CropDataset(learn.get_pixels(df, cfg), np.arange(len(df)), t, tf)
    loss_fn = make_loss('ce', head='multi')
    fixed = learn.make_loader(ds, 48, train=False)
    before = learn.predict_probs(model, fixed, prec, loss_fn=loss_fn)[1]
    opt = learn.make_optimizer(model, 'adamw', lr=1e-3)
    learn.train_one_epoch(model, learn.make_loader(ds, 8, train=True, seed=0), loss_fn, opt, prec, show=False)  # 12 steps
    after = learn.predict_probs(model, fixed, prec, loss_fn=loss_fn)[1]
    print(f'partial-label loss before {before:.3f}, after one epoch {after:.3f}')
    assert after < 0.8 * before, (before, after)


FLOOR_CFG = dict(img_size=64, epochs=6, batch_size=8, pretrained=True, tta='none', fold=0,
                 augment='light', frozen_stages=0, loss='focal')  # as its floors were measured, whatever the defaults become

def test_demo_f1_floor_small(outputs):
    "A short pretrained run on the 12-person demo clears measured floors (see FLOOR_SMALL, FLOOR_SMALL_MASK)."
    r = run_fold(dict(FLOOR_CFG, data_dir=outputs[1], run='floor'))
    print('small demo floor run:', {k: round(r[k], 4) for k in ('f1_macro', 'f1_mask', 'f1_gender', 'f1_age')})
    assert r['f1_macro'] >= FLOOR_SMALL and r['f1_mask'] >= FLOOR_SMALL_MASK, r


@pytest.mark.skipif(bool(os.environ.get('MASKCLF_FAST')), reason='MASKCLF_FAST=1 skips the full default config (~1.5 min idle)')
def test_demo_f1_floor_default(tmp_path, monkeypatch):
    "The main job (default config, fold 4, fresh demo data) scores well above chance (1/18 = 0.056)."
    monkeypatch.setenv('MASKCLF_OUTPUTS', str(tmp_path))
    r = run_fold(dict(fold=4))
    assert r['f1_macro'] >= FLOOR_DEFAULT, r


def test_predict_reproduces_the_fold(smoke):
    "`predict` on the eval photos with the fold's best.pt and its defaults (the run's TTA and framings) gives the fold's test_probs.npy."
    from maskclf.infer import predict, PROB_COLS
    fold_dir, data = smoke
    pred = predict(fold_dir / 'best.pt', data, device='cpu')
    np.testing.assert_allclose(pred[PROB_COLS].to_numpy(np.float32), np.load(fold_dir / 'test_probs.npy'), atol=1e-5)


def test_predict_uses_override_boxes(smoke, tmp_path):
    "`predict` crops with the run's `boxes_csv` rows for its photos (the run's training rows are skipped), or the file given."
    from maskclf.infer import predict, PROB_COLS
    from maskclf.checkpoint import load_checkpoint
    from maskclf.data import DataError, read_dataset, read_eval
    fold_dir, data = smoke
    ev, train_photo = read_eval(data), read_dataset(data).path.iloc[0]
    fix = tmp_path / 'fixes.csv'  # a deliberately wrong box (the photo's top-left corner) for eval photo 0
    fix.write_text(f'path,x1,y1,x2,y2\n{ev.path.iloc[0]},0,0,60,80\n{train_photo},0,0,60,80\n')
    ck = load_checkpoint(fold_dir / 'best.pt'); ck['config']['boxes_csv'] = str(fix)
    torch.save(ck, tmp_path / 'fixed.pt')  # the same weights, from a run trained with that override file
    base = np.load(fold_dir / 'test_probs.npy')
    probs = lambda **k: predict(tmp_path / 'fixed.pt', data, device='cpu', **k)[PROB_COLS].to_numpy(np.float32)
    p = probs()  # the run's file: only eval photo 0 moves
    assert np.abs(p[0] - base[0]).max() > 1e-3
    np.testing.assert_allclose(p[1:], base[1:], atol=1e-5)
    np.testing.assert_allclose(probs(boxes_csv=''), base, atol=1e-5)  # '' turns overrides off
    with pytest.raises(DataError, match='not a photo of this data set'): probs(boxes_csv=str(fix))  # a given file is strict
