//! Tone analysis for the audio tests: the transcoder's unit tests, and (through `#[path]` from
//! `tests/common`) the integration tests.

/// Root mean square of the samples.
pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Goertzel power at `freq`.
pub fn power(x: &[f32], rate: f32, freq: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &v in x {
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The strongest frequency between 50 Hz and 5 kHz: a coarse scan, then 1 Hz steps.
pub fn dominant_frequency(x: &[f32], rate: f32) -> f32 {
    let best = |freqs: &mut dyn Iterator<Item = f32>| {
        freqs
            .map(|f| (f, power(x, rate, f)))
            .fold((0.0, -1.0), |a, b| if b.1 > a.1 { b } else { a })
            .0
    };
    let coarse = best(&mut (5..500).map(|i| i as f32 * 10.0));
    best(&mut (0..=40).map(|i| coarse - 20.0 + i as f32))
}
