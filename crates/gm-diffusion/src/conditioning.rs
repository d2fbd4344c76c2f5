//! Class conditioning shared by every model of the crate: label dropout in training (the
//! extra label `classes` means "no label", so one network is both the conditional and the
//! unconditional model), the labels a likelihood conditions on, and classifier-free guidance.

use gm_core::model::{check_labels, Batch, SampleOptions};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::config::check_range;
use gm_core::{GmError, Result};

/// The labels one training step conditions on: `None` for an unconditional model (`classes`
/// 0); otherwise the batch's labels (required, checked) with each replaced by "no label" with
/// probability `dropout`. `what` names the caller in errors.
pub fn training_labels(
    batch: &Batch,
    b: i64,
    classes: i64,
    dropout: f64,
    device: Device,
    what: &str,
) -> Result<Option<Tensor>> {
    if classes == 0 {
        return Ok(None);
    }
    let labels = batch.labels.as_ref().ok_or_else(|| {
        GmError::Domain(format!(
            "{what} labels: a conditional model needs labels, got none"
        ))
    })?;
    check_labels(labels, b, classes, &format!("{what} labels"))?;
    let labels = labels.f_to_kind(Kind::Int64)?.f_to_device(device)?;
    let drop = Tensor::f_rand([b], (Kind::Float, device))?.f_lt(dropout)?;
    Ok(Some(
        labels.f_full_like(classes)?.f_where_self(&drop, &labels)?,
    ))
}

/// The labels a likelihood conditions on: the given ones for a conditional model (checked),
/// "no label" when none are given and the model was trained with label dropout (its
/// unconditional model), and `None` for an unconditional model.
pub fn likelihood_labels(
    labels: Option<&Tensor>,
    b: i64,
    classes: i64,
    dropout: f64,
    device: Device,
    what: &str,
) -> Result<Option<Tensor>> {
    if classes == 0 {
        return Ok(None);
    }
    match labels {
        Some(l) => {
            check_labels(l, b, classes, what)?;
            Ok(Some(l.f_to_kind(Kind::Int64)?.f_to_device(device)?))
        }
        None if dropout > 0.0 => Ok(Some(Tensor::f_full([b], classes, (Kind::Int64, device))?)),
        None => Err(GmError::Domain(format!(
            "{what}: this conditional model was trained without label dropout, so it has no unconditional likelihood; pass labels"
        ))),
    }
}

/// The start of a sampling call: the labels (a conditional model's, given or drawn uniformly,
/// drawn first) and `n` standard-normal draws `[n] ++ event_shape` scaled by the temperature.
pub fn start_sampling(
    options: &SampleOptions,
    n: i64,
    classes: i64,
    event_shape: &[i64],
    device: Device,
) -> Result<(Option<Tensor>, Tensor)> {
    let labels = if classes > 0 {
        Some(options.labels_for(n, classes, device)?)
    } else {
        None
    };
    let shape: Vec<i64> = std::iter::once(n)
        .chain(event_shape.iter().copied())
        .collect();
    let noise = Tensor::f_randn(shape.as_slice(), (Kind::Float, device))?
        .f_mul_scalar(options.temperature)?;
    Ok((labels, noise))
}

/// Checks a config's conditioning keys: `label_dropout` in [0, 1), `guidance` in [0, 100], and
/// a guidance scale other than 1 only with label dropout (it needs the unconditional model).
pub fn validate(conditional: bool, label_dropout: f64, guidance: f64) -> Result<()> {
    check_range("label_dropout", label_dropout, 0.0, 1.0)?;
    if label_dropout >= 1.0 {
        return Err(GmError::config(
            "label_dropout",
            "must be below 1 (a model that never sees its labels is not conditional)",
        ));
    }
    check_range("guidance", guidance, 0.0, 100.0)?;
    if conditional && guidance != 1.0 && label_dropout == 0.0 {
        return Err(GmError::config(
            "guidance",
            "classifier-free guidance needs the unconditional model: set label_dropout > 0",
        ));
    }
    Ok(())
}

/// Checks that guidance scale `w` can be used: any scale but 1 needs the unconditional model.
pub fn check_guidance(classes: i64, w: f64, dropout: f64) -> Result<()> {
    if classes > 0 && w != 1.0 && dropout == 0.0 {
        return Err(GmError::config(
            "guidance",
            "classifier-free guidance needs a model trained with label_dropout > 0",
        ));
    }
    Ok(())
}

/// Classifier-free guidance: `net` evaluated once on the batch doubled, first half with
/// `labels`, second half with "no label" (`classes`); returns `u + w (c − u)` of the two
/// halves' outputs (`c` conditional, `u` unconditional). At `w = 1` the conditional output
/// alone, in one call of the undoubled batch.
pub fn guided<F>(
    x: &Tensor,
    t: &Tensor,
    labels: &Tensor,
    classes: i64,
    w: f64,
    net: F,
) -> Result<Tensor>
where
    F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
{
    if w == 1.0 {
        return net(x, t, labels);
    }
    let b = gm_core::model::leading_dim(x, "[batch, ...]", "guided x")?;
    let none = labels.f_full_like(classes)?;
    let out = net(
        &Tensor::f_cat(&[x, x], 0)?,
        &Tensor::f_cat(&[t, t], 0)?,
        &Tensor::f_cat(&[labels, &none], 0)?,
    )?;
    let (c, u) = (out.f_narrow(0, 0, b)?, out.f_narrow(0, b, b)?);
    Ok(u.f_add(&c.f_sub(&u)?.f_mul_scalar(w)?)?)
}
