"""Reliability of runs (issue 11): fold locks, non-finite validation, failed starts, checkpoint and photo errors,
ensemble input checks, no lasting litter, a damaged crop cache (the data checks of case 4 are in test_validation.py),
and a bounded kill test (SIGKILL a tiny run at several points, resume it,
compare with an uninterrupted run). CPU, 32-pixel crops, random weights, 2 epochs: 59 s of CPU time in all (measured
with /usr/bin/time, subprocesses included); 9.6 min of wall time on a 2-core machine shared at load 13-20."""
import json, os, signal, socket, subprocess, sys
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
os.environ['OMP_NUM_THREADS'] = '1'  # one thread here and in the killed subprocesses: identical numbers, no spinning
torch.set_num_threads(1)
import maskclf.learn as learn
from maskclf.core import lock_path, read_lock, fresh_dir, process_start, FolderLockedError, repo_root
from maskclf.data import DataError
from maskclf.learn import run_fold, NonFiniteLossError, CheckpointError

TINY = dict(img_size=32, epochs=2, batch_size=16, pretrained=False, tta='none', fold=0, n_folds=5, amp=False,
            num_workers=0)
DIVERGE = dict(batch_size=64, optimizer='sgd', lr=1e30, grad_clip=0, scheduler='none')  # one step per epoch, blows up
NO_NAN_FILES = ('best.pt', 'last.pt', 'oof.csv', 'test_probs.npy', 'submission.csv', 'metrics.json')
TIMING = ('seconds', 'per_s', 'img_s', 'gpu_mem', 'code', 'throughput')  # history/metrics entries that measure time or memory, not results


@pytest.fixture(scope='module')
def reference(outputs):
    "A diverging run stops (a failed start); the same command with a sane lr then reuses the folder: the reference run."
    d, data = outputs
    cfg = dict(TINY, data_dir=data, run='ref')
    with pytest.raises(NonFiniteLossError) as nan:
        run_fold(dict(cfg, **DIVERGE))
    fold = d / 'ref' / 'fold0'
    after_nan = sorted(p.name for p in fold.iterdir())
    lock_after_nan = lock_path(fold).exists()
    import io, contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out): run_fold(cfg)  # no overwrite, no resume
    return dict(fold=fold, cfg=cfg, nan_message=str(nan.value), after_nan=after_nan, lock_after_nan=lock_after_nan,
                rerun_log=out.getvalue())


def test_nan_validation_stops_and_failed_start_reruns(reference):
    "Issue 11.2 and 11.5: the NaN validation stops the run, nothing NaN is written, and a plain rerun reuses the folder."
    assert 'validation at epoch 0' in reference['nan_message'] and 'lower the learning rate' in reference['nan_message']
    assert not set(reference['after_nan']) & set(NO_NAN_FILES), reference['after_nan']
    assert not reference['lock_after_nan']  # released on the error
    assert 'holds a failed start' in reference['rerun_log'] and 'reusing it' in reference['rerun_log']
    fold = reference['fold']
    assert json.loads((fold / 'config.json').read_text())['lr'] == learn.DEFAULT_CONFIG['lr']  # the rerun's config
    oof = pd.read_csv(fold / 'oof.csv')
    assert np.isfinite(oof.filter(regex=r'^p\d+$').to_numpy()).all() and np.isfinite(np.load(fold / 'test_probs.npy')).all()


def test_live_lock_refuses_then_stale_lock_clears(outputs, capsys):
    "Issue 11.1: a second run, an overwrite or a resume of a live fold is refused naming the holder; a dead one is cleared."
    d, data = outputs
    fold = d / 'locked' / 'fold0'; fold.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(['sleep', '60'])
    try:
        lock_path(fold).write_text(json.dumps(dict(pid=holder.pid, host=socket.gethostname(),
                                                   start=process_start(holder.pid), started='just now')))
        for extra in ({}, {'overwrite': True}, {'resume': True}):
            with pytest.raises(FolderLockedError, match=f'in use by process {holder.pid} on {socket.gethostname()}'):
                run_fold(dict(TINY, data_dir=data, run='locked', **extra))
        assert not fold.exists()  # refused before touching the folder
    finally:
        holder.kill(); holder.wait()
    with pytest.raises(DataError):  # the stale lock is cleared; the run then fails on its data ...
        run_fold(dict(TINY, data_dir=str(d / 'no_such_data.csv'), run='locked'))
    assert 'removed a stale lock' in capsys.readouterr().out
    assert read_lock(fold) is None  # ... and its own lock is released on that error


KILLER = r'''
import json, os, signal, sys, torch
torch.set_num_threads(1)
import maskclf.learn as L
point, cfg = sys.argv[1], json.loads(sys.argv[2])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == 'before_first_checkpoint':  # epoch 0's history row is written, no checkpoint yet
    real_hist = L.append_history
    def append_history(path, row): real_hist(path, row); die()
    L.append_history = append_history
elif point == 'inside_save':  # last.pt of epoch 1 is complete in its temporary file, not yet renamed
    real_save = torch.save
    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if '.last.pt.tmp' in str(f) and obj['epoch'] == 1: die()
    torch.save = save
elif point == 'while_finishing':  # oof.csv and test_probs.npy are written, metrics.json is not
    import maskclf.fold as F  # finish_fold writes the fold's results
    real_json = F.save_json
    def save_json(obj, path):
        if str(path).endswith('metrics.json'): die()
        return real_json(obj, path)
    F.save_json = save_json
L.run_fold(cfg)
'''


def comparable(fold: Path) -> dict:
    "A fold's results without the entries that measure time."
    h = pd.read_csv(fold / 'history.csv')
    m = json.loads((fold / 'metrics.json').read_text())
    return dict(history=h[[c for c in h.columns if not any(t in c for t in TIMING)]],
                metrics={k: v for k, v in m.items() if not any(t in k for t in TIMING)},
                oof=pd.read_csv(fold / 'oof.csv'), test=np.load(fold / 'test_probs.npy'),
                submission=pd.read_csv(fold / 'submission.csv'),
                files=sorted(p.name for p in fold.iterdir()))


@pytest.mark.parametrize('point', ['before_first_checkpoint', 'inside_save', 'while_finishing'])
def test_kill_then_resume_matches_uninterrupted(reference, outputs, point):
    "Issue 11.5/11.8: SIGKILL at `point`, resume (stale lock and temp file cleared): the same results as one clean run."
    d, data = outputs
    cfg = dict(reference['cfg'], run=f'kill_{point}')
    p = subprocess.run([sys.executable, '-c', KILLER, point, json.dumps(cfg)], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, PYTHONPATH=str(repo_root())), cwd=str(repo_root()))
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    fold = d / cfg['run'] / 'fold0'
    assert read_lock(fold) is not None  # the dead run's lock stays behind
    tmp = list(fold.glob('.*.tmp*'))
    assert bool(tmp) == (point == 'inside_save'), tmp  # the killed save left its temporary file
    if point != 'before_first_checkpoint':  # a checkpoint exists: a plain rerun is told to resume (and clears litter)
        with pytest.raises(FileExistsError, match='-p resume True'): run_fold(cfg)
        assert not list(fold.glob('.*.tmp*'))
    run_fold(dict(cfg, resume=True))
    got, want = comparable(fold), comparable(reference['fold'])
    assert got['files'] == want['files'] and not [f for f in got['files'] if f.startswith('.')], got['files']
    assert read_lock(fold) is None
    pd.testing.assert_frame_equal(got['history'], want['history'])
    pd.testing.assert_frame_equal(got['oof'], want['oof'])
    pd.testing.assert_frame_equal(got['submission'], want['submission'])
    np.testing.assert_array_equal(got['test'], want['test'])
    assert got['metrics'] == want['metrics']
    torch.load(fold / 'best.pt', weights_only=True); torch.load(fold / 'last.pt', weights_only=True)  # not corrupt


def test_relative_data_dir_is_saved_absolute(outputs, monkeypatch):
    "A relative data_dir (papermill run from the repository root) is saved absolute: the ensemble, run in nbs/, finds it."
    d, data = outputs
    monkeypatch.chdir(Path(data).parent)
    with pytest.raises(NonFiniteLossError): run_fold(dict(TINY, **DIVERGE, data_dir=Path(data).name, run='relative'))
    saved = json.loads((d / 'relative' / 'fold0' / 'config.json').read_text())
    assert saved['data_dir'] == os.path.abspath(data), saved['data_dir']


def test_interrupted_run_refused_without_resume(outputs):
    "An interrupted fold (last.pt, no metrics) tells a plain rerun to resume; a never-started one tells resume to run."
    d, data = outputs
    fold = d / 'cut' / 'fold0'; fold.mkdir(parents=True)
    (fold / 'config.json').write_text('{}'); (fold / 'last.pt').write_bytes(b'x')
    with pytest.raises(FileExistsError, match=r'interrupted run .*-p resume True'):
        run_fold(dict(TINY, data_dir=data, run='cut'))
    with pytest.raises(FileNotFoundError, match='nothing to resume'):
        run_fold(dict(TINY, data_dir=data, run='never', resume=True))


def test_checkpoint_and_photo_errors(reference, tmp_path):
    "Issue 11.6: bad checkpoints are refused by name with what a checkpoint holds; bad photos listed or skipped."
    from maskclf.infer import predict
    from maskclf.data import read_eval
    best = reference['fold'] / 'best.pt'
    ck = torch.load(best, weights_only=True)
    cut = tmp_path / 'cut.pt'; cut.write_bytes(best.read_bytes()[:len(best.read_bytes()) // 2])
    torch.save({**ck, 'config': {}}, tmp_path / 'empty_config.pt')
    torch.save({k: v for k, v in ck.items() if k != 'config'}, tmp_path / 'no_config.pt')
    cfg = dict(ck['config']); del cfg['img_size']; torch.save({**ck, 'config': cfg}, tmp_path / 'no_img_size.pt')
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {tmp_path / "ran"}',))
    torch.save({**ck, 'x': Payload()}, tmp_path / 'payload.pt')
    photos = list(read_eval(reference['cfg']['data_dir']).path[:3])
    for name, why in [('cut', 'not a readable checkpoint'), ('empty_config', 'config lacks'),
                      ('no_config', "lacks the key(s) ['config']"), ('no_img_size', "lacks ['img_size']"),
                      ('payload', 'could run code')]:
        with pytest.raises(CheckpointError) as e: predict(tmp_path / f'{name}.pt', photos)
        assert f'{name}.pt' in str(e.value) and why in str(e.value) and 'keys model, config, epoch' in str(e.value)
    assert not (tmp_path / 'ran').exists()  # the pickled payload never ran
    (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    with pytest.raises(DataError, match=r'2 problem\(s\)[\s\S]*bad.jpg[\s\S]*gone.jpg: file missing'):
        predict(best, [*photos, tmp_path / 'bad.jpg', tmp_path / 'gone.jpg'], device='cpu')
    with pytest.warns(UserWarning, match='skipped 2'):
        some = predict(best, [*photos, tmp_path / 'bad.jpg', tmp_path / 'gone.jpg'], device='cpu', on_error='skip')
    assert len(some) == 3 and sorted(Path(p).name for p in some.attrs['skipped']) == ['bad.jpg', 'gone.jpg']


def test_ensemble_names_the_bad_fold(tmp_path):
    "Issue 11.2: NaN in a fold's test_probs.npy or oof.csv stops the ensemble with one error naming each file."
    from maskclf.infer import fake_run, fake_eval_dir, ensemble_run, write_submission
    r = fake_run(tmp_path / 'r', n_folds=3); ev = fake_eval_dir(tmp_path / 'comp')
    t = np.load(r / 'fold0' / 'test_probs.npy'); t[:] = np.nan; np.save(r / 'fold0' / 'test_probs.npy', t)
    o = pd.read_csv(r / 'fold2' / 'oof.csv'); o.loc[1:, 'p0'] = np.nan; o.to_csv(r / 'fold2' / 'oof.csv', index=False)
    with pytest.raises(DataError) as e: ensemble_run(r, data_dir=ev)
    assert str(r / 'fold0' / 'test_probs.npy') in str(e.value) and str(r / 'fold2' / 'oof.csv') in str(e.value)
    assert 'fold1' not in str(e.value) and not (r / 'ensemble').exists()
    with pytest.raises(DataError, match='NaN'): write_submission(t, ev, tmp_path / 'sub.csv')
    assert not (tmp_path / 'sub.csv').exists()


def test_folds_of_one_run_must_agree(reference, tmp_path):
    "A fold whose config differs from its run's finished folds is refused before anything is made; so is an ensemble of such folds."
    from maskclf.config import MixedRunError
    from maskclf.infer import fake_run, fake_eval_dir, ensemble_run
    run = reference['fold'].parent
    with pytest.raises(MixedRunError, match=r'fold0: img_size=32 there, 48 here.*-p run NEW_NAME'):
        run_fold(dict(reference['cfg'], fold=4, img_size=48))  # e.g. one papermill command of five with a changed parameter
    assert not (run / 'fold4').exists()
    r = fake_run(tmp_path / 'r', n_folds=3); ev = fake_eval_dir(tmp_path / 'comp')
    c = json.loads((r / 'fold2' / 'config.json').read_text()); (r / 'fold2' / 'config.json').write_text(json.dumps({**c, 'epochs': 3}))
    with pytest.raises(MixedRunError, match='fold2: epochs=3 there, '): ensemble_run(r, data_dir=ev)
    assert not (r / 'ensemble').exists()


def test_overwrite_twice_in_one_second(tmp_path):
    "Issue 11.8: two overwrites within the same second each move the old folder aside under its own name."
    run = fresh_dir(tmp_path / 'fold0')
    for i in range(3):
        (run / 'metrics.json').write_text(str(i)); fresh_dir(run, overwrite=True)
    assert sorted(p.read_text() for p in tmp_path.glob('fold0.old-*/metrics.json')) == ['0', '1', '2']


def test_damaged_crop_cache_is_named_and_rebuilt(outputs, tmp_path):
    "Case 3: a crop cache zeroed behind an intact header is named in a warning, moved aside and rebuilt; no black crops."
    from maskclf.crop import crop_cache
    from maskclf.data import read_dataset
    df = read_dataset(outputs[1]).head(8)
    first = np.array(crop_cache(df, size=(32, 24), cache_dir=tmp_path, progress=False))
    (f,) = tmp_path.glob('crops-*/crops.npy')
    a = np.load(f, mmap_mode='r+'); a[:] = 0; a.flush(); del a  # same size, header intact
    with pytest.warns(UserWarning, match='crops'): again = np.array(crop_cache(df, size=(32, 24), cache_dir=tmp_path, progress=False))
    assert again.any() and (again == first).all()
    assert list((tmp_path / 'damaged').iterdir())
