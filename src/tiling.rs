//! Tiling: a frame inspected as a grid of overlapping network-sized tiles instead of one
//! input squashed to the network's size, so small and thin defects on a large frame keep
//! their pixels.
//!
//! The frame is resized to the canvas (`across` tiles of the input width, less the overlaps;
//! likewise down), normalised as one image, and cut into tiles; each tile goes through the
//! networks and the map stage as a whole input would; the tile maps are stitched back into
//! one canvas-sized map, whose max is the frame's score. Where tiles overlap, each canvas
//! pixel takes the tile whose own middle it lies nearer to (the outer half of every overlap
//! is dropped), so no tile's zero-padded border reaches the stitched map except at the
//! canvas's own edges. Trainer and daemon cut and stitch with this one code: training
//! batches are the same tiles the daemon serves.

use serde::{Deserialize, Serialize};

use crate::detector::anomaly_map::Map;

/// The tile grid of a bundle's input; one tile (the whole frame) by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiles {
    /// Tiles side by side.
    pub across: u32,
    /// Tiles one above the other.
    pub down: u32,
    /// Pixels (of the canvas) two neighbouring tiles share; even, less than a tile's side.
    pub overlap: u32,
}

impl Default for Tiles {
    fn default() -> Self {
        Self { across: 1, down: 1, overlap: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TilesError {
    #[error("tiles {0}: expected ACROSSxDOWN, e.g. 2x2")]
    Syntax(String),
    #[error("tiles {across}x{down}: each count must be 1 to 16")]
    Count { across: u32, down: u32 },
    #[error("tile overlap {overlap}: must be even and below half the tile's {side} px")]
    Overlap { overlap: u32, side: u32 },
}

impl Tiles {
    /// Parses `ACROSSxDOWN` (the command line's `--tiles 2x2`). One tile has no overlap,
    /// whatever `overlap` says (so `1x1` is the default grid, as recorded everywhere).
    pub fn parse(s: &str, overlap: u32) -> Result<Self, TilesError> {
        let syntax = || TilesError::Syntax(s.to_string());
        let (a, d) = s.split_once(['x', 'X']).ok_or_else(syntax)?;
        let across = a.trim().parse().map_err(|_| syntax())?;
        let down = d.trim().parse().map_err(|_| syntax())?;
        let tiles = Self { across, down, overlap };
        Ok(if tiles.is_single() { Self::default() } else { tiles })
    }

    /// One tile: the frame is the input.
    pub fn is_single(&self) -> bool {
        self.across == 1 && self.down == 1
    }

    pub fn count(&self) -> usize {
        (self.across * self.down) as usize
    }

    /// Checks the counts and that the overlap fits tiles of `width` x `height`.
    pub fn validate(&self, width: u32, height: u32) -> Result<(), TilesError> {
        let (across, down) = (self.across, self.down);
        if !(1..=16).contains(&across) || !(1..=16).contains(&down) {
            return Err(TilesError::Count { across, down });
        }
        let side = width.min(height);
        if !self.overlap.is_multiple_of(2) || 2 * self.overlap >= side {
            return Err(TilesError::Overlap { overlap: self.overlap, side });
        }
        Ok(())
    }

    /// The canvas (width, height) the frame is resized to for tiles of `width` x `height`.
    pub fn canvas(&self, width: u32, height: u32) -> (u32, u32) {
        let side = |n: u32, size: u32| n * size - (n - 1) * self.overlap;
        (side(self.across, width), side(self.down, height))
    }

    /// Each tile's top-left corner on the canvas, row by row.
    pub fn origins(&self, width: u32, height: u32) -> Vec<(usize, usize)> {
        // A single row or column has no step (and its side may be below the overlap).
        let (sx, sy) = (width.saturating_sub(self.overlap) as usize, height.saturating_sub(self.overlap) as usize);
        (0..self.down as usize).flat_map(|j| (0..self.across as usize).map(move |i| (i * sx, j * sy))).collect()
    }
}

/// Cuts a planar CHW canvas tensor (`[3, canvas]`) into tile tensors (`[3, height, width]`),
/// in [`Tiles::origins`] order.
pub fn cut(canvas: &[f32], tiles: &Tiles, width: u32, height: u32) -> Vec<Vec<f32>> {
    let (cw, ch) = tiles.canvas(width, height);
    let (cw, ch, w, h) = (cw as usize, ch as usize, width as usize, height as usize);
    let planes: Vec<&[f32]> = canvas.chunks_exact(cw * ch).collect();
    tiles
        .origins(width, height)
        .into_iter()
        .map(|(x0, y0)| {
            let mut out = Vec::with_capacity(3 * w * h);
            for plane in &planes {
                for y in y0..y0 + h {
                    out.extend_from_slice(&plane[y * cw + x0..y * cw + x0 + w]);
                }
            }
            out
        })
        .collect()
}

/// The half-open canvas range tile `i` of `n` (starting at `start`, `size` long) owns along
/// one axis: all of it but the outer half of each overlap it shares with a neighbour.
fn owned(i: usize, n: usize, start: usize, size: usize, overlap: usize) -> (usize, usize) {
    let lo = if i == 0 { start } else { start + overlap / 2 };
    let hi = if i + 1 == n { start + size } else { start + size - overlap / 2 };
    (lo, hi)
}

/// One canvas-sized map from the tiles' maps (each `height` x `width`, [`Tiles::origins`]
/// order); each canvas pixel comes from the tile that owns it (see the module docs).
pub fn stitch(maps: &[Map], tiles: &Tiles, width: u32, height: u32) -> Map {
    let (cw, ch) = tiles.canvas(width, height);
    let (cw, ch, w, h) = (cw as usize, ch as usize, width as usize, height as usize);
    let (across, down, ov) = (tiles.across as usize, tiles.down as usize, tiles.overlap as usize);
    let mut data = vec![0.0f32; cw * ch];
    for (k, (map, (x0, y0))) in maps.iter().zip(tiles.origins(width, height)).enumerate() {
        let (xl, xh) = owned(k % across, across, x0, w, ov);
        let (yl, yh) = owned(k / across, down, y0, h, ov);
        for y in yl..yh {
            let src = &map.data[(y - y0) * w + (xl - x0)..(y - y0) * w + (xh - x0)];
            data[y * cw + xl..y * cw + xh].copy_from_slice(src);
        }
    }
    Map { data, height: ch, width: cw }
}

/// The frame's map from its inputs' maps: the one map itself, or the tiles' stitched.
pub fn join(mut maps: Vec<Map>, tiles: &Tiles, width: u32, height: u32) -> Map {
    if maps.len() == 1 { maps.pop().expect("one map") } else { stitch(&maps, tiles, width, height) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvas_and_origins_follow_the_overlap() {
        let t = Tiles { across: 3, down: 2, overlap: 32 };
        assert_eq!(t.canvas(256, 128), (3 * 256 - 64, 2 * 128 - 32));
        assert_eq!(t.origins(256, 128), vec![(0, 0), (224, 0), (448, 0), (0, 96), (224, 96), (448, 96)]);
        assert_eq!(Tiles::default().canvas(256, 256), (256, 256));
    }

    #[test]
    fn cut_then_stitch_gives_the_canvas_back() {
        let t = Tiles { across: 3, down: 2, overlap: 8 };
        let (w, h) = (16, 12);
        let (cw, ch) = t.canvas(w, h);
        // One plane holds each pixel's own index, the other two its negation and a constant.
        let n = (cw * ch) as usize;
        let canvas: Vec<f32> =
            (0..n).map(|i| i as f32).chain((0..n).map(|i| -(i as f32))).chain(vec![7.0; n]).collect();
        let tiles = cut(&canvas, &t, w, h);
        assert_eq!(tiles.len(), 6);
        assert!(tiles.iter().all(|x| x.len() == 3 * (w * h) as usize));
        // Tile 4 (middle of the second row) starts at (8, 4): its first value is that pixel.
        assert_eq!(tiles[4][0], (4 * cw + 8) as f32);
        let maps: Vec<Map> = tiles
            .iter()
            .map(|x| Map { data: x[..(w * h) as usize].to_vec(), height: h as usize, width: w as usize })
            .collect();
        let back = stitch(&maps, &t, w, h);
        assert_eq!((back.width, back.height), (cw as usize, ch as usize));
        assert_eq!(back.data, canvas[..n]);
    }

    #[test]
    fn overlaps_take_the_nearer_tile() {
        let t = Tiles { across: 2, down: 1, overlap: 4 };
        let (w, h) = (8, 1);
        let maps = [Map { data: vec![1.0; 8], height: 1, width: 8 }, Map { data: vec![2.0; 8], height: 1, width: 8 }];
        // Canvas 12 wide; tile 2 starts at 4; the 4 shared pixels split 2 / 2.
        assert_eq!(stitch(&maps, &t, w, h).data, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Tiles::parse("2x3", 32).unwrap(), Tiles { across: 2, down: 3, overlap: 32 });
        assert_eq!(Tiles::parse("1x1", 32).unwrap(), Tiles::default());
        assert!(Tiles::parse("2*3", 0).is_err());
        assert!(Tiles { across: 0, down: 1, overlap: 0 }.validate(256, 256).is_err());
        assert!(Tiles { across: 2, down: 2, overlap: 31 }.validate(256, 256).is_err());
        assert!(Tiles { across: 2, down: 2, overlap: 128 }.validate(256, 256).is_err());
        assert!(Tiles { across: 2, down: 2, overlap: 32 }.validate(256, 256).is_ok());
    }
}
