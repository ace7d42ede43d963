"""Distillation losses over next-token distributions, and the held-out figures.

* ``soft_label_kl``: KL(teacher || student) at temperature T, scaled by T^2 (Hinton et al.; the
  scale keeps the gradients' size independent of T). The teacher is either full logits or its
  cached top-k log-probabilities at T (the rest of the mass as one more outcome).
* ``generalized_jsd``: GKD's generalized Jensen-Shannon divergence with mixture weight beta:
  0 is forward KL(teacher || student), 1 reverse KL(student || teacher), between them the JSD of
  the two against their beta-mixture (Agarwal et al. 2024, as TRL's GKDTrainer computes it).
* ``cross_entropy``: next-token cross-entropy on the data.

All take logits (batch, positions, vocab) already aligned to the same next-token targets and
return the mean over positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def soft_label_kl(student: torch.Tensor, teacher, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean per position.

    ``teacher``: logits (same shape as ``student``), or a (log_probs, ids) pair: the teacher's k
    largest log-probabilities *at temperature T* and their token ids (the cache). Then the KL is
    taken over k + 1 outcomes, those k tokens and "any other token" (the remaining mass of each
    side), which never exceeds the full KL and, unlike renormalising the k, never rewards a student
    for dropping the tail.
    """
    student_log = F.log_softmax(student.float() / temperature, dim=-1)
    if isinstance(teacher, tuple):
        values, ids = teacher
        teacher_log = _with_rest(values.float())
        student_log = _with_rest(student_log.gather(-1, ids.long()))
    else:
        teacher_log = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)
    return kl.mean() * temperature**2


def _with_rest(top_log: torch.Tensor) -> torch.Tensor:
    """k log-probabilities -> k + 1, the last the log of the mass outside them."""
    rest = torch.log1p(-top_log.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6))
    return torch.cat([top_log, rest], dim=-1)


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float, temperature: float = 1.0) -> torch.Tensor:
    """GKD's generalized JSD between the student's and the teacher's next-token distributions."""
    student_log = F.log_softmax(student.float() / temperature, dim=-1)
    teacher_log = F.log_softmax(teacher.float() / temperature, dim=-1)

    def kl(p_log, q_log):  # KL(p || q)
        return (p_log.exp() * (p_log - q_log)).sum(-1)

    if beta == 0:
        divergence = kl(teacher_log, student_log)
    elif beta == 1:
        divergence = kl(student_log, teacher_log)
    else:
        mixture = torch.logsumexp(torch.stack([teacher_log + math.log(beta), student_log + math.log(1 - beta)]), dim=0)
        divergence = beta * kl(teacher_log, mixture) + (1 - beta) * kl(student_log, mixture)
    return divergence.mean()


def heldout_figures(student_logits: list[torch.Tensor], teacher_log_probs: list[torch.Tensor],
                    targets: list[torch.Tensor]) -> dict[str, float]:
    """Perplexity of student and teacher, mean KL(teacher || student) per token and top-1 agreement
    on held-back windows (teacher-forced), as ``edge-sdk eval`` reports them for packages."""
    tokens, nll, teacher_nll, kl, agree = 0, 0.0, 0.0, 0.0, 0
    for logits, teacher_log, target in zip(student_logits, teacher_log_probs, targets):
        student_log = F.log_softmax(logits.double(), dim=-1)
        teacher_log = teacher_log.double()
        rows = torch.arange(len(target))
        tokens += len(target)
        nll -= float(student_log[rows, target].sum())
        teacher_nll -= float(teacher_log[rows, target].sum())
        kl += float((teacher_log.exp() * (teacher_log - student_log)).sum())
        agree += int((teacher_log.argmax(-1) == student_log.argmax(-1)).sum())
    return {
        "tokens": tokens,
        "perplexity": math.exp(nll / tokens),
        "teacher_perplexity": math.exp(teacher_nll / tokens),
        "kl_divergence": max(kl / tokens, 0.0),
        "top1_agreement": agree / tokens,
    }
