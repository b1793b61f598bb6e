"""Build the distillation side of a training run from its configs: the frozen teacher
run on the fly and the training-only modules (frame-level KD heads sized from the cuts'
targets, layer-wise auxiliary branches), with the checks that tie them to the data and
to the student."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from mvq_kd.dataset import DataConfig, load_cuts
from mvq_kd.fields import EMBEDDING_FIELD, INDEX_FIELD, check_quantizer_ids
from mvq_kd.kd.frame import FrameKd, FrameKdConfig, TargetSpec, probe_field
from mvq_kd.kd.layerwise import LayerwiseKd, LayerwiseKdConfig
from mvq_kd.model.encoder import ENCODER_FRAME_SHIFT, EncoderConfig
from mvq_kd.teacher import ConformerTeacher, Teacher, TeacherSpec


def _num_params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _no_time_warp(data: DataConfig, targets: str, family: str) -> None:
    """Frame-aligned teacher targets forbid time warping the student's input."""
    if data.spec_augment and data.time_warp_factor > 0:
        raise ValueError(
            f"Time-warp SpecAugment moves frames away from {targets}: use --time-warp-factor "
            f"0 (or --spec-augment false) with {family}"
        )
    if data.tempo_perturb:
        raise ValueError(
            f"Tempo perturbation moves frames away from {targets}: use --tempo-perturb 0 "
            f"with {family}"
        )


def build_teacher(spec: Optional[TeacherSpec], device: torch.device) -> Teacher:
    """The frozen teacher run on every batch."""
    if spec is None:
        raise ValueError(
            "distillation from a teacher run on the fly (--embedding-source teacher, "
            "layer-wise KD) needs --teacher-model"
        )
    teacher = spec.build(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    logging.info(
        f"Teacher on the fly: {spec.kind} {spec.model} "
        f"({_num_params(teacher):.2f} M parameters, frozen)"
    )
    return teacher


def build_layerwise_kd(
    cfg: LayerwiseKdConfig, data: DataConfig, encoder: EncoderConfig, teacher: Teacher
) -> LayerwiseKd:
    """The auxiliary non-streaming branches of layer-wise KD for a student ``encoder``."""
    if not isinstance(teacher, ConformerTeacher):
        raise ValueError(
            "layer-wise KD needs a Conformer teacher trained by train.py (--teacher-kind "
            f"conformer): it reads the teacher's attention; got {type(teacher).__name__}"
        )
    if abs(teacher.frame_shift - ENCODER_FRAME_SHIFT) > 1e-6:
        raise ValueError(
            f"layer-wise KD needs the teacher's frame rate to be the student's: teacher "
            f"{teacher.frame_shift} s, student {ENCODER_FRAME_SHIFT} s per frame"
        )
    _no_time_warp(data, "the teacher's", "layer-wise KD")
    kd = LayerwiseKd(
        cfg,
        encoder.d_model,
        encoder.num_layers,
        teacher.dim,
        teacher.num_layers,
        teacher.num_heads,
        dropout=encoder.dropout,
    )
    scales = ", ".join(f"{k} {v}" for k, v in kd.scales.items() if v > 0)
    logging.info(
        f"Layer-wise KD (student -> teacher layers {kd.pairs}; {scales}"
        + (f", APC {kd.apc_shift} frames ahead" if kd.scales["apc_loss"] else "")
        + f"): {_num_params(kd):.2f} M training-only parameters"
    )
    return kd


def build_frame_kd(
    cfg: FrameKdConfig, data: DataConfig, encoder: EncoderConfig, teacher: Optional[Teacher]
) -> FrameKd:
    """The frame-KD heads, sized from the training cuts' targets (or the ``teacher`` run
    on the fly)."""
    _no_time_warp(data, "their teacher targets", "frame-level KD")
    cuts = load_cuts(data.train_cuts)
    # Stored targets of unlabeled cuts: prepare.sh stage 7 on their part too.
    for name in cfg.cut_fields() if data.unlabeled_cuts else ():
        probe_field(load_cuts(data.unlabeled_cuts), name, what="unlabeled cuts")
    codebooks, embeddings = None, None
    if cfg.use_codebooks:
        codebooks = probe_field(cuts, INDEX_FIELD)
        qid = check_quantizer_ids(
            load_cuts(data.train_cuts + data.unlabeled_cuts), cfg.quantizer_id
        )
        logging.info(
            f"MVQ-KD: {codebooks.dim} codebooks per {codebooks.frame_shift * 1000:.0f} ms "
            f"teacher frame, quantizer {qid}, loss scale {cfg.codebook_loss_scale}"
        )
    if cfg.runs_teacher:
        embeddings = TargetSpec(teacher.dim, teacher.frame_shift)
    elif cfg.use_embeddings:
        embeddings = probe_field(cuts, EMBEDDING_FIELD)
    if embeddings is not None:
        logging.info(
            f"{cfg.embedding_loss.upper()} regression of {embeddings.dim}-dim teacher "
            f"embeddings ({cfg.embedding_source}), loss scale {cfg.embedding_loss_scale}"
        )
    frame_kd = FrameKd(
        cfg,
        encoder.d_model,
        encoder.num_layers,
        codebooks,
        embeddings,
        student_frame_shift=ENCODER_FRAME_SHIFT,
    )
    logging.info(
        f"Frame-level KD on student layer {frame_kd.layer}: "
        f"{_num_params(frame_kd):.2f} M training-only parameters"
    )
    return frame_kd
