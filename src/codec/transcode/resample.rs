//! Sample-rate conversion to 48 kHz: a rational-ratio polyphase resampler with a
//! Kaiser-windowed sinc (about 80 dB stop band), our own rather than a crate's (rubato pulled
//! in six crates).
//!
//! It is zero phase — output sample `n` is the input signal at `n * in_rate / out_rate`
//! exactly — and [`Resampler::flush`] makes the output cover exactly the input, which is what
//! lets the timing count samples instead of measuring delays.

/// Rational-ratio polyphase resampler with a Kaiser-windowed sinc, zero phase: output sample
/// `n` is the input signal at input position `n * in_rate / out_rate` exactly (it is produced
/// once `HALF` input samples past that position have arrived). Planar in, interleaved out.
pub(super) struct Resampler {
    channels: usize,
    /// out_rate / in_rate = up / down, reduced.
    up: u64,
    down: u64,
    /// Half the filter length in input samples; 0 = pass-through.
    half: usize,
    /// `up` phases of `2 * half` taps.
    table: Vec<f32>,
    /// Input history per channel; index 0 is input sample `hist_start`.
    hist: [Vec<f32>; 2],
    hist_start: i64,
    /// The next output's input position: `base + phase / up`.
    base: i64,
    phase: u64,
    /// Reusable output buffer for the caller.
    pub(super) out: Vec<f32>,
}

/// Half-length of the filter for upsampling, in input samples (48 taps).
const RESAMPLER_HALF: usize = 24;
/// Kaiser window beta (about 80 dB stop band).
const KAISER_BETA: f64 = 8.0;
/// Largest number of phases (up factor) the table is built for.
const MAX_PHASES: u64 = 4096;

impl Resampler {
    pub(super) fn new(in_rate: u32, out_rate: u32, channels: usize) -> Self {
        let g = gcd(u64::from(in_rate), u64::from(out_rate)).max(1);
        let (mut up, mut down) = (u64::from(out_rate) / g, u64::from(in_rate) / g);
        if up > MAX_PHASES {
            // An odd explicit rate: round it to the nearest 1/MAX_PHASES step. The error is
            // below 0.03 %, well inside the one-frame sync tolerance before re-anchoring.
            down = (down * MAX_PHASES).div_ceil(up).max(1);
            up = MAX_PHASES;
        }
        let mut r = Self {
            channels: channels.clamp(1, 2),
            up,
            down,
            half: 0,
            table: Vec::new(),
            hist: [Vec::new(), Vec::new()],
            hist_start: 0,
            base: 0,
            phase: 0,
            out: Vec::new(),
        };
        if up == down {
            return r;
        }
        let ratio = up as f64 / down as f64;
        // Cut-off in cycles per input sample: below the lower Nyquist, with room for the
        // transition band.
        let cutoff = 0.5 * ratio.min(1.0) * 0.91;
        let half = ((RESAMPLER_HALF as f64) / ratio.min(1.0)).ceil() as usize;
        let taps = 2 * half;
        let i0_beta = bessel_i0(KAISER_BETA);
        let mut table = Vec::with_capacity(up as usize * taps);
        for p in 0..up {
            let start = table.len();
            for k in 0..taps {
                // Input sample `base - half + 1 + k` against output position `base + p/up`.
                let d = (k as f64 - (half as f64 - 1.0)) - p as f64 / up as f64;
                let x = d / half as f64;
                let w = if x.abs() >= 1.0 {
                    0.0
                } else {
                    bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / i0_beta
                };
                let s = 2.0 * cutoff * sinc(2.0 * cutoff * d);
                table.push((s * w) as f32);
            }
            // Unity gain at DC for every phase.
            let sum: f32 = table[start..].iter().sum();
            if sum != 0.0 {
                table[start..].iter_mut().for_each(|t| *t /= sum);
            }
        }
        r.half = half;
        r.table = table;
        r.hist_start = -(half as i64 - 1);
        for h in &mut r.hist {
            h.resize(half - 1, 0.0);
        }
        r
    }

    /// `planes` (one per channel, equal lengths) in, interleaved output appended to `out`.
    pub(super) fn process(&mut self, planes: &[Vec<f32>], out: &mut Vec<f32>) {
        let ch = self.channels;
        if self.half == 0 {
            let n = planes.first().map_or(0, Vec::len);
            out.reserve(n * ch);
            for i in 0..n {
                for p in &planes[..ch.min(planes.len())] {
                    out.push(p.get(i).copied().unwrap_or(0.0));
                }
            }
            return;
        }
        for (c, h) in self.hist.iter_mut().enumerate().take(ch) {
            if let Some(p) = planes.get(c) {
                h.extend_from_slice(p);
            }
        }
        // Both channels' histories have the same length (planes of one frame are equal).
        let len = self.hist[0].len();
        if ch == 2 && self.hist[1].len() != len {
            self.hist[1].resize(len, 0.0);
        }
        let taps = 2 * self.half;
        let hist_end = self.hist_start + len as i64;
        loop {
            let first = self.base - (self.half as i64 - 1);
            if self.base + self.half as i64 >= hist_end {
                break;
            }
            let off = (first - self.hist_start) as usize;
            let coefs = &self.table[self.phase as usize * taps..][..taps];
            for h in &self.hist[..ch] {
                out.push(dot(&h[off..off + taps], coefs));
            }
            self.phase += self.down;
            self.base += (self.phase / self.up) as i64;
            self.phase %= self.up;
        }
        // Forget input no later output needs.
        let keep_from = self.base - (self.half as i64 - 1);
        let drop = (keep_from - self.hist_start).max(0) as usize;
        if drop > 4096 {
            for h in &mut self.hist[..ch] {
                h.drain(..drop.min(h.len()));
            }
            self.hist_start += drop as i64;
        }
    }

    /// Pushes the filter's lookahead of silence so the output covers all input so far.
    pub(super) fn flush(&mut self, out: &mut Vec<f32>) {
        let zeros = vec![0.0; self.half];
        let planes = [zeros.clone(), zeros];
        self.process(&planes[..self.channels], out);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four partial sums let the compiler vectorise.
    let mut acc = [0.0f32; 4];
    let (ca, ra) = a.split_at(a.len() / 4 * 4);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(4).zip(cb.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= half / k as f64;
        sum += term * term;
        if term * term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::OPUS_RATE;
    use super::*;

    #[test]
    fn resampler_is_clean_and_exact_in_length() {
        for (rate, tone) in [(44_100u32, 1000.0f64), (32_000, 3000.0), (96_000, 5000.0)] {
            let mut r = Resampler::new(rate, OPUS_RATE, 1);
            let mut out = Vec::new();
            let n = rate as usize; // 1 s in 10 ms pieces
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    (2.0 * std::f64::consts::PI * tone * i as f64 / f64::from(rate)).sin() as f32
                })
                .collect();
            for piece in x.chunks(rate as usize / 100) {
                r.process(&[piece.to_vec()], &mut out);
            }
            r.flush(&mut out);
            // One second in, one second out: the flush covers exactly the input.
            assert_eq!(out.len(), OPUS_RATE as usize);
            let (mut s, mut e) = (0.0f64, 0.0f64);
            for (i, &y) in out.iter().enumerate().take(47_000).skip(1000) {
                let ideal =
                    (2.0 * std::f64::consts::PI * tone * i as f64 / f64::from(OPUS_RATE)).sin();
                s += ideal * ideal;
                e += (ideal - f64::from(y)).powi(2);
            }
            let snr = 10.0 * (s / e).log10();
            assert!(snr > 70.0, "{rate} Hz: SNR {snr:.1} dB");
        }
    }
}
