"""The GPU input path, run on CPU tensors: batched augmentation on the device against the albumentations path,
a fold trained from uint8 batches, TensorBoard files, the rows of the training benchmark, what a step reads back, the training state let go
before a fold predicts, and DDP's BatchNorm statistics at validation (two gloo processes). CPU, small images."""
import math, os

import numpy as np, pandas as pd, pytest, torch

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
os.environ['OMP_NUM_THREADS'] = '1'  # see tests/test_train.py: one thread each on a shared 2-core machine
torch.set_num_threads(1)
from maskclf.augment import AUG_LEVELS, batch_tfms
from maskclf.core import repo_root, decode
from maskclf.learn import (make_dataset, make_loader, make_precision, make_optimizer, reseed_loader, run_fold,
                           seed_everything, train_one_epoch)
from maskclf.loss import make_loss

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DC = dict(mean=MEAN, std=STD)
LO, HI = (0 - np.array(MEAN)) / STD, (1 - np.array(MEAN)) / STD  # normalised values of the pixels 0 and 255
TINY = dict(img_size=48, epochs=2, batch_size=8, pretrained=False, tta='none', fold=0, n_folds=5)


def crops(n=12, h=32, w=24, seed=0):
    "Random uint8 crops (n, h, w, 3) with mixed targets, some heads unknown (-1)."
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 18, n)
    t = dict(zip(('mask', 'gender', 'age'), (np.asarray(v) for v in decode(lab))), label=lab.copy())
    t['gender'][::4] = -1; t['label'][::4] = -1  # partial labels pass through both paths unchanged
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), t


@pytest.mark.parametrize('level', AUG_LEVELS)
def test_batched_matches_albumentations(level):
    "Same batch shapes, dtype, value range and targets from the device path (kornia) as from albumentations."
    pix, t = crops()
    prec = make_precision('cpu')
    out = {}
    for on in ('cpu', 'device'):
        ds = make_dataset(pix, np.arange(len(pix))[::-1], t, (32, 24), DC, level, on)
        x, y = next(iter(make_loader(ds, 6, train=False)))
        out[on] = prec.inputs(x, ds.batch_tfms), y
    (xc, yc), (xd, yd) = out['cpu'], out['device']
    assert xc.shape == xd.shape == (6, 3, 32, 24) and xc.dtype == xd.dtype == torch.float32
    for x in (xc, xd):
        assert (x.amin((0, 2, 3)) >= torch.tensor(LO) - 1e-5).all() and (x.amax((0, 2, 3)) <= torch.tensor(HI) + 1e-5).all()
    assert yc.keys() == yd.keys() and all(torch.equal(yc[k], yd[k]) for k in yc)
    assert (yd['label'] == -1).any() and (yd['gender'] == -1).any()
    if level == 'none': torch.testing.assert_close(xc, xd, atol=1e-5, rtol=0)
    else: assert not torch.allclose(xd, batch_tfms((32, 24), MEAN, STD)(torch.from_numpy(pix[::-1][:6].copy())))


@pytest.mark.parametrize('level', ('light', 'strong'))
def test_batched_augmentation_changes_images_like_albumentations(level):
    "Per pixel, the random changes of both paths are of the same size (mean absolute change within a factor 2.5)."
    pix, _ = crops(64, 48, 36, seed=1)
    pix = np.ascontiguousarray(np.repeat(pix[:, ::8, ::8], 8, 1).repeat(8, 2)[:, :48, :36])  # blocky: blur must not dominate
    from maskclf.augment import train_tfms, eval_tfms
    clean = torch.stack([eval_tfms((48, 36), MEAN, STD)(image=a)['image'] for a in pix])
    torch.manual_seed(0)
    dev = batch_tfms((48, 36), MEAN, STD, level)(torch.from_numpy(pix))
    tf = train_tfms((48, 36), MEAN, STD, level); tf.set_random_seed(0)
    alb = torch.stack([tf(image=a)['image'] for a in pix])
    d_dev, d_alb = (dev - clean).abs().mean().item(), (alb - clean).abs().mean().item()
    assert d_dev > 0.05 and d_alb > 0.05 and 1 / 2.5 < d_dev / d_alb < 2.5, (d_dev, d_alb)


class Tiny(torch.nn.Module):
    def __init__(self): super().__init__(); self.fc = torch.nn.Linear(3 * 32 * 24, 8)
    def forward(self, x, target=None):
        z = self.fc(x.flatten(1)); return {'mask': z[:, :3], 'gender': z[:, 3:5], 'age': z[:, 5:]}


@pytest.mark.parametrize('workers', (0, 1))
def test_device_path_is_deterministic(workers):
    "Two epochs reseeded alike give the same losses on the device path (with persistent workers too)."
    pix, t = crops(24)
    losses = []
    for loader_seed in (10, 10, 20):  # the same seeds twice, then another seed for the loader alone
        seed_everything(0); net = Tiny(); opt = make_optimizer(net, 'adam', 1e-2)
        dl = make_loader(make_dataset(pix, np.arange(24), t, (32, 24), DC, 'strong', 'device'), 8, True, 0, workers)
        assert dl.persistent_workers == (workers > 0)
        run = []
        for epoch in range(2):
            seed_everything(10 + epoch); reseed_loader(dl, loader_seed + epoch)
            run.append(train_one_epoch(net, dl, make_loss('focal', head='multi'), opt, make_precision('cpu'), show=False)['train_loss'])
        losses.append(run)
    assert losses[0] == losses[1] and math.isfinite(losses[0][0])
    assert losses[2] != losses[0]  # `reseed_loader` reaches the loader: a no-op would repeat the first run


def test_uint8_fold_with_tensorboard(outputs, capsys, monkeypatch):
    "A tiny fold trains from uint8 batches augmented on the device, prints img/s and writes TensorBoard events."
    import maskclf.fold
    d, data = outputs
    built, make = [], maskclf.fold.make_dataset
    def spy(*a, **k):  # the training set the fold builds: its input path, and what one item holds
        ds = make(*a, **k); built.append((a[6], str(ds[0][0].dtype))); return ds
    monkeypatch.setattr(maskclf.fold, 'make_dataset', spy)
    r = run_fold(dict(TINY, data_dir=data, run='u8', augment_on='device', augment='strong', num_workers=1, tensorboard=True))
    assert built == [('device', 'torch.uint8')], built  # uint8 crops, augmented per batch on the device
    fold = d / 'u8' / 'fold0'
    assert 0 <= r['f1_mask'] <= 1 and (fold / 'best.pt').exists()
    hist = pd.read_csv(fold / 'history.csv')
    assert len(hist) == 2 and (hist.img_s > 0).all()
    assert 'img/s' in capsys.readouterr().out
    events = list((fold / 'tb').glob('events.out.tfevents.*'))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(fold / 'tb')); ea.Reload()
    assert {'loss/train', 'loss/val', 'lr', 'f1/macro', 'f1/mask', 'speed/train_img_s'} <= set(ea.Tags()['scalars'])
    assert len(ea.Scalars('loss/train')) == 2
    run_fold(dict(TINY, data_dir=data, run='no_tb', epochs=1))
    assert not (d / 'no_tb' / 'fold0' / 'tb').exists()  # only when asked


def test_fold_lets_training_state_go_before_predicting(outputs, monkeypatch):
    "The training model and its optimizer are freed before `finish_fold` predicts with best.pt; `fit` syncs buffers each epoch."
    import weakref, maskclf.fold, maskclf.learn
    d, data = outputs
    held, fit, finish = {}, maskclf.fold.fit, maskclf.fold.finish_fold
    def spy_fit(model, train_dl, val_dl, loss_fn, optimizer, *a, **k):
        held.update(model=weakref.ref(model), optimizer=weakref.ref(optimizer))
        return fit(model, train_dl, val_dl, loss_fn, optimizer, *a, **k)
    def spy_finish(*a, **k):
        held['alive'] = [n for n in ('model', 'optimizer') if held[n]() is not None]  # reference counts alone: no gc.collect
        return finish(*a, **k)
    synced, sync = [], maskclf.learn.sync_buffers
    monkeypatch.setattr(maskclf.fold, 'fit', spy_fit); monkeypatch.setattr(maskclf.fold, 'finish_fold', spy_finish)
    monkeypatch.setattr(maskclf.learn, 'sync_buffers', lambda m: (synced.append(type(m).__name__), sync(m)))
    r = run_fold(dict(TINY, data_dir=data, run='let_go', epochs=2))
    assert held['alive'] == [] and 0 <= r['f1_mask'] <= 1
    assert len(synced) == 2  # before each epoch's validation (a no-op here, without a process group)

def test_training_step_reads_back_only_its_loss():
    "Over an epoch of the default recipe, the one value a step reads back from the device is the previous step's loss."
    from maskclf._testing import host_reads
    from maskclf.config import resolve_config, crop_size
    from maskclf.fold import make_recipe
    from maskclf.learn import make_mix, seed_epoch
    cfg = resolve_config(dict(pretrained=False, img_size=48, batch_size=8, num_workers=0, augment_on='cpu'))
    pix, t = crops(32, *crop_size(cfg)[::-1])
    prec = make_precision('cpu', cfg['amp'])
    r = make_recipe(cfg, pix, np.arange(24), np.arange(24, 32), t, t, prec, other=pix[:, :, ::-1].copy())
    seed_epoch(r.train_dl, cfg['seed'], 0)
    with host_reads() as reads:
        train_one_epoch(r.model, r.train_dl, r.loss_fn, r.optimizer, prec, r.schedule, 0, cfg['grad_clip'], make_mix(cfg['mix']), False)
    assert dict(reads.seen) == {'learn.py:_checked_loss': len(r.train_dl)}, reads.seen

def test_bench_train_rows(outputs):
    "nbs/bench_train.ipynb writes every row the issue lists, with the columns it asks for."
    import papermill as pm
    d, data = outputs
    pm.execute_notebook(str(repo_root() / 'nbs' / 'bench_train.ipynb'), str(d / 'bench_train.ipynb'), progress_bar=False,
                        parameters=dict(data_dir=data, img_size=48, batch_size=4, n_steps=2, num_workers=1, out_name='bt'),
                        cwd=str(repo_root()), kernel_name='python3')
    res = pd.read_csv(d / 'bench' / 'bt.csv')
    assert {'what', 'img_s', 'workers', 'img_size', 'batch_size', 'amp'} <= set(res.columns)
    assert {'ceiling_train', 'ceiling_infer', 'train', 'infer', 'pipeline'} <= set(res.what)
    assert set(res[res.what == 'pipeline'].augment_on) == {'cpu', 'device'} and (res.img_s > 0).all()


def test_persistent_workers_resume_order():
    "With persistent workers, the order of epoch 1 is the same whether the loader ran epoch 0 first or starts there (a resume)."
    from maskclf.learn import CropDataset, make_loader, reseed_loader
    n = 16
    targets = {k: np.arange(n) % m for k, m in (('label', 18), ('mask', 3), ('gender', 2), ('age', 3))}
    ds = lambda: CropDataset(np.zeros((n, 8, 6, 3), np.uint8), np.arange(n), {**targets, 'label': np.arange(n)})
    def order(loader, epoch):
        reseed_loader(loader, epoch)
        return [int(i) for _, y in loader for i in y['label']]
    going = make_loader(ds(), 4, True, seed=0, num_workers=1)
    assert going.persistent_workers
    first = order(going, 0)
    second = order(going, 1)
    assert second == order(make_loader(ds(), 4, True, seed=0, num_workers=1), 1)
    assert sorted(first) == list(range(n)) and first != second and list(range(n)) not in (first, second)  # it does shuffle


def _bn_stats_after_sync(rank, world, port, out_dir):
    "One rank of a gloo group: BatchNorm statistics of its own, then `sync_buffers`; writes what it holds."
    import torch.distributed as dist
    from maskclf.distributed import sync_buffers
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    bn = torch.nn.BatchNorm2d(3)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(bn))  # copies rank 0's buffers once, here
    bn.running_mean.fill_(rank + 1.); bn.num_batches_tracked.fill_(10 * (rank + 1))  # then each rank's last batch moves them
    sync_buffers(ddp)  # through the wrapper, as `fit` calls it
    torch.save({k: v.clone() for k, v in bn.state_dict().items()}, f'{out_dir}/rank{rank}.pt')
    dist.destroy_process_group()


def test_sync_buffers_two_processes(tmp_path):
    "Under DDP every rank validates with rank 0's BatchNorm statistics, not the ones its last batch left."
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    mp.spawn(_bn_stats_after_sync, args=(2, port, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r1['running_mean'].eq(1.).all() and r1['num_batches_tracked'] == 10
    for k in r0: assert torch.equal(r0[k], r1[k]), k
