/* The few libavcodec calls tsbridge's `ffmpeg` feature makes, behind a small C surface.
 *
 * Why C and not bindings: every field read (a frame's sample rate, channel layout, planes) is
 * compiled against the installed headers, so the same Rust declarations work with any FFmpeg
 * from 4.4 to 7 without bindgen (no libclang) and without Rust copies of FFmpeg's structs,
 * whose layout changes between major versions. Decode only; see docs/DESIGN.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <libavcodec/avcodec.h>
#include <libavutil/channel_layout.h>
#include <libavutil/frame.h>

#if LIBAVUTIL_VERSION_INT >= AV_VERSION_INT(57, 24, 100)
#define TSB_NEW_LAYOUT 1
#endif

/* A decoder: its context and the packet and frame it reuses (audio and video alike). */
typedef struct tsb_dec {
    AVCodecContext *ctx;
    AVPacket *pkt;
    AVFrame *frame;
} tsb_dec;
typedef tsb_dec tsb_audio;
typedef tsb_dec tsb_video;

static void dec_close(tsb_dec *d) {
    if (!d) return;
    avcodec_free_context(&d->ctx);
    av_packet_free(&d->pkt);
    av_frame_free(&d->frame);
    free(d);
}

/* One thread: a stream's audio is a few percent of a core and threads would reorder it; for
 * video, frame threading would add a frame of delay per thread, and the re-encoder runs on its
 * own thread per stream already. */
static tsb_dec *dec_open(enum AVCodecID id) {
    const AVCodec *codec = avcodec_find_decoder(id);
    if (!codec) return NULL;
    tsb_dec *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->ctx = avcodec_alloc_context3(codec);
    d->pkt = av_packet_alloc();
    d->frame = av_frame_alloc();
    if (!d->ctx || !d->pkt || !d->frame) goto fail;
    d->ctx->thread_count = 1;
    if (avcodec_open2(d->ctx, codec, NULL) < 0) goto fail;
    return d;
fail:
    dec_close(d);
    return NULL;
}

/* Which decoder: 0 AC-3, 1 E-AC-3, 2 AAC (ADTS or raw), 3 AAC in LATM (LOAS frames). */
tsb_audio *tsb_audio_open(int which) {
    switch (which) {
    case 0: return dec_open(AV_CODEC_ID_AC3);
    case 1: return dec_open(AV_CODEC_ID_EAC3);
    case 2: return dec_open(AV_CODEC_ID_AAC);
    case 3: return dec_open(AV_CODEC_ID_AAC_LATM);
    default: return NULL;
    }
}

void tsb_audio_close(tsb_audio *d) { dec_close(d); }

/* One coded frame in (copied by libavcodec). 0, or a negative AVERROR. */
int tsb_audio_send(tsb_audio *d, const uint8_t *data, int size) {
    av_packet_unref(d->pkt);
    if (av_new_packet(d->pkt, size) < 0) return AVERROR(ENOMEM);
    memcpy(d->pkt->data, data, size);
    return avcodec_send_packet(d->ctx, d->pkt);
}

/* The next decoded frame: 1 when there is one, 0 when the decoder needs more input, or a
 * negative AVERROR. */
int tsb_audio_receive(tsb_audio *d) {
    int r = avcodec_receive_frame(d->ctx, d->frame);
    if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return 0;
    return r < 0 ? r : 1;
}

int tsb_audio_rate(const tsb_audio *d) { return d->frame->sample_rate; }
int tsb_audio_samples(const tsb_audio *d) { return d->frame->nb_samples; }

static int frame_channels(const AVFrame *f) {
#ifdef TSB_NEW_LAYOUT
    return f->ch_layout.nb_channels;
#else
    return f->channels;
#endif
}

/* Where channel `ch` is in the frame, or -1. */
static int index_of(const AVFrame *f, int ch_new, uint64_t ch_old) {
#ifdef TSB_NEW_LAYOUT
    (void)ch_old;
    if (f->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC) return -1;
    return av_channel_layout_index_from_channel(&f->ch_layout, (enum AVChannel)ch_new);
#else
    (void)ch_new;
    if (!f->channel_layout) return -1;
    return av_get_channel_layout_channel_index(f->channel_layout, ch_old);
#endif
}

/* Planes the frame is copied to: 1 (mono), 2 (left, right), or 6 (front left, front right,
 * centre, LFE, left surround, right surround; missing ones silent). */
int tsb_audio_planes(const tsb_audio *d) {
    int n = frame_channels(d->frame);
    return n <= 2 ? n : 6;
}

static float sample(const AVFrame *f, int ch, int i) {
    int n = frame_channels(f);
    switch (f->format) {
    case AV_SAMPLE_FMT_FLTP: return ((const float *)f->extended_data[ch])[i];
    case AV_SAMPLE_FMT_FLT: return ((const float *)f->extended_data[0])[i * n + ch];
    case AV_SAMPLE_FMT_S16P: return ((const int16_t *)f->extended_data[ch])[i] / 32768.0f;
    case AV_SAMPLE_FMT_S16: return ((const int16_t *)f->extended_data[0])[i * n + ch] / 32768.0f;
    case AV_SAMPLE_FMT_S32P: return ((const int32_t *)f->extended_data[ch])[i] / 2147483648.0f;
    case AV_SAMPLE_FMT_S32: return ((const int32_t *)f->extended_data[0])[i * n + ch] / 2147483648.0f;
    default: return 0.0f;
    }
}

/* Copies the frame to `out`: tsb_audio_planes() planes of `cap` floats each, back to back (the
 * first tsb_audio_samples() of each written). 0, or -1 when `cap` is too small. */
int tsb_audio_copy(const tsb_audio *d, float *out, int cap) {
    const AVFrame *f = d->frame;
    int n = frame_channels(f), len = f->nb_samples, planes = tsb_audio_planes(d);
    if (len > cap) return -1;
    int src[6];
    if (planes <= 2) {
        for (int p = 0; p < planes; p++) src[p] = p;
    } else {
#ifdef TSB_NEW_LAYOUT
        const int want[6] = {AV_CHAN_FRONT_LEFT, AV_CHAN_FRONT_RIGHT, AV_CHAN_FRONT_CENTER,
            AV_CHAN_LOW_FREQUENCY, AV_CHAN_SIDE_LEFT, AV_CHAN_SIDE_RIGHT};
        const int back[2] = {AV_CHAN_BACK_LEFT, AV_CHAN_BACK_RIGHT};
#else
        const int want[6] = {0}, back[2] = {0};
#endif
        const uint64_t want_old[6] = {AV_CH_FRONT_LEFT, AV_CH_FRONT_RIGHT, AV_CH_FRONT_CENTER,
            AV_CH_LOW_FREQUENCY, AV_CH_SIDE_LEFT, AV_CH_SIDE_RIGHT};
        const uint64_t back_old[2] = {AV_CH_BACK_LEFT, AV_CH_BACK_RIGHT};
        int known = 0;
        for (int p = 0; p < 6; p++) {
            src[p] = index_of(f, want[p], want_old[p]);
            if (src[p] < 0 && p >= 4) src[p] = index_of(f, back[p - 4], back_old[p - 4]);
            if (src[p] >= 0) known++;
        }
        /* No layout: take the channels in order as far as they go. */
        if (!known)
            for (int p = 0; p < 6; p++) src[p] = p < n ? p : -1;
    }
    for (int p = 0; p < planes; p++) {
        float *o = out + (size_t)p * cap;
        if (src[p] < 0 || src[p] >= n) {
            for (int i = 0; i < len; i++) o[i] = 0.0f;
            continue;
        }
        for (int i = 0; i < len; i++) o[i] = sample(f, src[p], i);
    }
    return 0;
}

/* ---- video: MPEG-2 and HEVC pictures for the H.264 re-encoder ---- */

/* Which decoder: 0 MPEG-2 video (MPEG-1 too), 1 HEVC. */
tsb_video *tsb_video_open(int which) {
    switch (which) {
    case 0: return dec_open(AV_CODEC_ID_MPEG2VIDEO);
    case 1: return dec_open(AV_CODEC_ID_HEVC);
    default: return NULL;
    }
}

void tsb_video_close(tsb_video *d) { dec_close(d); }

/* One access unit (its timeline PTS travels through the decoder's reordering); size 0 drains.
 * 0, or a negative AVERROR. */
int tsb_video_send(tsb_video *d, const uint8_t *data, int size, int64_t pts) {
    if (size == 0) return avcodec_send_packet(d->ctx, NULL);
    av_packet_unref(d->pkt);
    if (av_new_packet(d->pkt, size) < 0) return AVERROR(ENOMEM);
    memcpy(d->pkt->data, data, size);
    d->pkt->pts = pts;
    return avcodec_send_packet(d->ctx, d->pkt);
}

/* The next picture in display order: 1, 0 when more input is needed, or a negative AVERROR. */
int tsb_video_receive(tsb_video *d) {
    int r = avcodec_receive_frame(d->ctx, d->frame);
    if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return 0;
    return r < 0 ? r : 1;
}

/* width, height, 1 if interlaced, 1 if top field first, 1 if 8-bit 4:2:0 (what is copied). */
void tsb_video_info(const tsb_video *d, int *info) {
    const AVFrame *f = d->frame;
    info[0] = f->width;
    info[1] = f->height;
    info[2] = f->interlaced_frame;
    info[3] = f->top_field_first;
    info[4] = f->format == AV_PIX_FMT_YUV420P || f->format == AV_PIX_FMT_YUVJ420P;
}

int64_t tsb_video_pts(const tsb_video *d) { return d->frame->best_effort_timestamp; }

/* Copies an 8-bit 4:2:0 picture into `out` as I420 (Y, then U, then V, no padding): width x
 * height + 2 x ((width + 1) / 2 x (height + 1) / 2) bytes. 0, or -1 for another format or a
 * short `cap`. */
int tsb_video_copy(const tsb_video *d, uint8_t *out, size_t cap) {
    const AVFrame *f = d->frame;
    if (f->format != AV_PIX_FMT_YUV420P && f->format != AV_PIX_FMT_YUVJ420P) return -1;
    size_t w = f->width, h = f->height, cw = (w + 1) / 2, ch = (h + 1) / 2;
    if (cap < w * h + 2 * cw * ch) return -1;
    for (size_t r = 0; r < h; r++) memcpy(out + r * w, f->data[0] + r * f->linesize[0], w);
    out += w * h;
    for (int p = 1; p <= 2; p++) {
        for (size_t r = 0; r < ch; r++) memcpy(out + r * cw, f->data[p] + r * f->linesize[p], cw);
        out += cw * ch;
    }
    return 0;
}
