//! Training-time augmentation of normal images by flips and quarter turns, for surfaces
//! whose texture has no orientation (tiles, sheet, fabric): the students and the memory bank
//! then see every orientation a normal surface can come in. Off by default: an object with an
//! up and a left (a part on a fixture, a label) would learn that its mirror image is normal.
//!
//! The copies are made on the preprocessed planar tensor (after the resize to the network's
//! square input), so the teacher sees exactly the flipped or turned frame.

/// Which copies of each training image are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Augment {
    /// The image as it is.
    #[default]
    None,
    /// The image, its left-right and up-down mirrors, and its half turn (4 copies).
    Flip,
    /// Every flip and quarter turn: the 8 symmetries of the square (needs a square input).
    Rotate,
}

#[derive(Debug, thiserror::Error)]
#[error("--augment rotate needs a square input, not {width}x{height}")]
pub struct NotSquare {
    pub width: usize,
    pub height: usize,
}

impl Augment {
    pub fn name(self) -> &'static str {
        match self {
            Augment::None => "none",
            Augment::Flip => "flip",
            Augment::Rotate => "rotate",
        }
    }

    /// Copies per image.
    pub fn copies(self) -> usize {
        match self {
            Augment::None => 1,
            Augment::Flip => 4,
            Augment::Rotate => 8,
        }
    }

    /// Checks the input geometry.
    pub fn check(self, width: usize, height: usize) -> Result<(), NotSquare> {
        if self == Augment::Rotate && width != height {
            return Err(NotSquare { width, height });
        }
        Ok(())
    }

    /// Every copy of a planar `[channels, height, width]` tensor, the original first (moved,
    /// not copied: with `None` this costs nothing).
    pub fn apply(self, planar: Vec<f32>, height: usize, width: usize) -> Vec<Vec<f32>> {
        let plane = height * width;
        let turned: Vec<Vec<f32>> = (1..self.copies())
            .map(|k| {
                let mut out = vec![0.0; planar.len()];
                for (src, dst) in planar.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
                    for y in 0..height {
                        for x in 0..width {
                            let (sy, sx) = source(k, y, x, height, width);
                            dst[y * width + x] = src[sy * width + sx];
                        }
                    }
                }
                out
            })
            .collect();
        std::iter::once(planar).chain(turned).collect()
    }
}

/// Where output pixel `(y, x)` of copy `k` is read from: bit 0 mirrors left-right, bit 1
/// up-down, bit 2 transposes (with the mirrors, the quarter turns; square only).
fn source(k: usize, y: usize, x: usize, height: usize, width: usize) -> (usize, usize) {
    let (mut y, mut x) = if k & 4 != 0 { (x, y) } else { (y, x) };
    if k & 1 != 0 {
        x = width - 1 - x;
    }
    if k & 2 != 0 {
        y = height - 1 - y;
    }
    (y, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_the_distinct_symmetries_and_keep_every_value() {
        // A 1-channel 3x3 tensor with distinct values: every symmetry gives a distinct copy.
        let t: Vec<f32> = (0..9).map(|v| v as f32).collect();
        for (aug, n) in [(Augment::None, 1), (Augment::Flip, 4), (Augment::Rotate, 8)] {
            let copies = aug.apply(t.clone(), 3, 3);
            assert_eq!(copies.len(), n);
            assert_eq!(copies[0], t, "the original comes first");
            for (i, c) in copies.iter().enumerate() {
                let mut sorted = c.clone();
                sorted.sort_by(f32::total_cmp);
                assert_eq!(sorted, t, "copy {i} is a permutation");
                assert!(copies[..i].iter().all(|o| o != c), "copy {i} repeats an earlier one");
            }
        }
        let flips = Augment::Flip.apply(t.clone(), 3, 3);
        assert_eq!(flips[1][..3], [2.0, 1.0, 0.0], "left-right mirror");
        assert_eq!(flips[2][..3], [6.0, 7.0, 8.0], "up-down mirror");
    }

    #[test]
    fn flips_work_on_any_shape_and_rotations_want_a_square() {
        let t: Vec<f32> = (0..2 * 2 * 3).map(|v| v as f32).collect();
        let c = Augment::Flip.apply(t, 2, 3);
        assert_eq!(c[1][..6], [2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        assert_eq!(c[1][6..], [8.0, 7.0, 6.0, 11.0, 10.0, 9.0], "each channel flipped alike");
        assert!(Augment::Flip.check(3, 2).is_ok());
        assert!(Augment::Rotate.check(3, 2).unwrap_err().to_string().contains("3x2"));
    }
}
