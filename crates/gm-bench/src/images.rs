//! PNG pictures for the report: sample grids for images, scatter plots for 2D points.

use gm_core::tch::{Device, Kind, Tensor};
use gm_core::{GmError, Result};
use std::path::Path;

fn save(img: image::GrayImage, path: &Path) -> Result<()> {
    img.save(path)
        .map_err(|e| GmError::io(path, std::io::Error::other(e.to_string())))
}

/// A grid of `[n, 1, H, W]` (or `[n, H·W]` square) images with values in `[0, max]`.
pub fn image_grid(images: &Tensor, max: f64, cols: i64, path: &Path) -> Result<()> {
    let n = images.size()[0];
    let per: i64 = images.size()[1..].iter().product();
    let side = (per as f64).sqrt().round() as i64;
    if side * side != per {
        return Err(GmError::shape(
            "image_grid",
            "square images",
            &images.size(),
        ));
    }
    let values = Vec::<f32>::try_from(
        &images
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_reshape([-1])?,
    )?;
    let rows = (n + cols - 1) / cols;
    let s = side as u32;
    let mut img = image::GrayImage::new(
        s * cols as u32 + cols as u32 + 1,
        s * rows as u32 + rows as u32 + 1,
    );
    for k in 0..n as usize {
        let (r, c) = ((k as i64 / cols) as u32, (k as i64 % cols) as u32);
        for y in 0..s {
            for x in 0..s {
                let v = values[k * per as usize + (y * s + x) as usize] as f64 / max;
                img.put_pixel(
                    1 + c * (s + 1) + x,
                    1 + r * (s + 1) + y,
                    image::Luma([(v.clamp(0.0, 1.0) * 255.0) as u8]),
                );
            }
        }
    }
    save(img, path)
}

/// A scatter plot of `[n, 2]` points on the square `[lo, hi]²`, as a density of hits.
pub fn scatter(points: &Tensor, lo: f64, hi: f64, path: &Path) -> Result<()> {
    let size = 200u32;
    let mut counts = vec![0u32; (size * size) as usize];
    let p = Vec::<f32>::try_from(
        &points
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_reshape([-1])?,
    )?;
    for xy in p.chunks(2) {
        let fx = (xy[0] as f64 - lo) / (hi - lo);
        let fy = (hi - xy[1] as f64) / (hi - lo);
        if (0.0..1.0).contains(&fx) && (0.0..1.0).contains(&fy) {
            counts[((fy * size as f64) as u32 * size + (fx * size as f64) as u32) as usize] += 1;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bytes: Vec<u8> = counts
        .iter()
        .map(|&c| 255 - ((c as f64 / max).sqrt() * 255.0) as u8)
        .collect();
    save(
        image::GrayImage::from_raw(size, size, bytes).expect("size² bytes"),
        path,
    )
}
