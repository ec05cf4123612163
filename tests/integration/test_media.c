/* Media processing: the subprocess runner (limits, timeouts, captured output, inherited
 * descriptors closed), ffprobe's reading of real files made with ffmpeg at test time, and the
 * durable job queue with its workers through the real server and store. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "media.h"
#include "media_files.h"
#include "subprocess.h"
#include "testserver.h"

static char Dir[64]; /* inputs generated for the whole file */

/* Runs a shell command line built by the test itself (inputs for ffmpeg); fails the test
 * unless it succeeds. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(cmd));
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("command failed (%d): %s", rc, cmd);
}

static void in_dir(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", Dir, name);
    assert_true(n > 0 && (size_t)n < cap);
}

/* ---- subprocess ----------------------------------------------------------------------------- */

static subprocess_limits lim_default(void)
{
    return (subprocess_limits){.timeout_ms = 10000, .cpu_s = 10, .memory_bytes = 1ull << 30, .file_bytes = 1 << 20};
}

static void test_subprocess_output(void **state)
{
    (void)state;
    const char *argv[] = {"/bin/sh", "-c", "printf 'hello\\n'; echo err line >&2; exit 3", NULL};
    subprocess_limits lim = lim_default();
    char out[64];
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_true(res.exited);
    assert_int_equal(res.exit_code, 3);
    assert_false(res.timed_out);
    assert_string_equal(out, "hello\n");
    assert_int_equal(res.out_len, 6);
    assert_false(res.out_truncated);
}

static void test_subprocess_truncates(void **state)
{
    (void)state;
    /* 100 000 bytes of stdout into 16: the rest is drained (the child is not blocked on a
     * full pipe) and dropped. */
    const char *argv[] = {"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x", NULL};
    subprocess_limits lim = lim_default();
    char out[16];
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_true(res.exited);
    assert_int_equal(res.exit_code, 0);
    assert_int_equal(res.out_len, 15);
    assert_true(res.out_truncated);
    assert_string_equal(out, "xxxxxxxxxxxxxxx");
}

static void test_subprocess_timeout_kills_group(void **state)
{
    (void)state;
    /* A child that starts a grandchild and both sleep: the wall-clock limit kills the group,
     * so the grandchild (holding the pipes) goes too and the run returns. */
    const char *argv[] = {"/bin/sh", "-c", "sleep 30 & sleep 30; echo never", NULL};
    subprocess_limits lim = lim_default();
    lim.timeout_ms = 200;
    char out[16];
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_true(res.timed_out);
    assert_false(res.exited);
    assert_int_equal(res.signal, SIGKILL);
    assert_string_equal(out, "");
    /* No zombie left: the child was reaped. */
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
}

static void test_subprocess_closes_fds(void **state)
{
    (void)state;
    /* A descriptor the parent holds open without close-on-exec (as a library might) is not
     * inherited; stdin is /dev/null. */
    int fd = open("/dev/null", O_RDONLY);
    assert_true(fd >= 3);
    const char *argv[] = {"/bin/sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '; cat", NULL};
    subprocess_limits lim = lim_default();
    char out[256];
    subprocess_result res;
    rpc_error err = {{0}};
    int st = subprocess_run(argv, &lim, "test", out, sizeof(out), &res, &err);
    close(fd);
    assert_int_equal(st, RPC_OK);
    assert_int_equal(res.exit_code, 0);
    /* 0 1 2, and ls's own directory descriptor (3): nothing of the parent's. */
    assert_string_equal(out, "0 1 2 3 ");
}

static void test_subprocess_limits(void **state)
{
    (void)state;
    /* RLIMIT_FSIZE: writing past it kills with SIGXFSZ (dd's write fails: it is ignored by
     * no one here). */
    char path[128];
    in_dir(path, sizeof(path), "big");
    char script[256];
    snprintf(script, sizeof(script), "head -c 200000 /dev/zero > %s", path);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    subprocess_limits lim = lim_default();
    lim.file_bytes = 4096;
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", NULL, 0, &res, &err), RPC_OK);
    assert_false(res.exited && res.exit_code == 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size <= 4096);
    /* RLIMIT_CORE is 0 and RLIMIT_AS is what was asked. */
    const char *argv2[] = {"/bin/sh", "-c", "ulimit -c; ulimit -v", NULL};
    lim = lim_default();
    lim.memory_bytes = 512ull << 20;
    char out[64];
    assert_int_equal(subprocess_run(argv2, &lim, "test", out, sizeof(out), &res, &err), RPC_OK);
    assert_string_equal(out, "0\n524288\n");
}

static void test_subprocess_cannot_start(void **state)
{
    (void)state;
    const char *argv[] = {"/nonexistent/tool", "-x", NULL};
    subprocess_limits lim = lim_default();
    subprocess_result res;
    rpc_error err = {{0}};
    assert_int_equal(subprocess_run(argv, &lim, "test", NULL, 0, &res, &err), RPC_ERR);
    assert_non_null(strstr(err.message, "cannot run /nonexistent/tool"));
    /* Too many arguments. */
    const char *many[SUBPROCESS_ARGS_MAX + 1];
    for (size_t i = 0; i < SUBPROCESS_ARGS_MAX; i++)
        many[i] = "true";
    many[SUBPROCESS_ARGS_MAX] = NULL;
    assert_int_equal(subprocess_run(many, &lim, "test", NULL, 0, &res, &err), RPC_ERR);
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
}

/* ---- probe ---------------------------------------------------------------------------------- */

/* An app that only carries the tool settings media_probe reads. */
static app Probe_app;

static void test_probe_files(void **state)
{
    (void)state;
    char path[128];
    media_probe_info info;
    rpc_error err = {{0}};

    in_dir(path, sizeof(path), "av.mp4");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_OK);
    assert_true(info.has_video);
    assert_true(info.has_audio);
    assert_int_equal(info.width, 320);
    assert_int_equal(info.height, 240);
    assert_string_equal(info.video_codec, "h264");
    assert_string_equal(info.audio_codec, "aac");
    assert_true(info.duration_ms >= 900 && info.duration_ms <= 1200);
    assert_non_null(strstr(info.format_name, "mp4"));

    in_dir(path, sizeof(path), "still.jpg");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_OK);
    assert_false(info.has_video);
    assert_false(info.has_audio);
    assert_string_equal(info.video_codec, "mjpeg");
    assert_int_equal(info.width, 64);

    in_dir(path, sizeof(path), "still.png");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_OK);
    assert_false(info.has_video);
    assert_string_equal(info.video_codec, "png");

    in_dir(path, sizeof(path), "text.txt");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_ERR);
    assert_non_null(strstr(err.message, "not a media file"));

    in_dir(path, sizeof(path), "missing");
    assert_int_equal(media_probe(&Probe_app, path, &info, &err), RPC_ERR);
}

static void test_probe_parse_table(void **state)
{
    (void)state;
    static const struct {
        const char *out;
        int st, has_video, has_audio;
        const char *vcodec;
    } cases[] = {
        /* cover art in an audio file is no video */
        {"streams.stream.0.codec_name=\"mp3\"\nstreams.stream.0.codec_type=\"audio\"\n"
         "streams.stream.1.codec_name=\"mjpeg\"\nstreams.stream.1.codec_type=\"video\"\n"
         "streams.stream.1.disposition.attached_pic=1\nformat.format_name=\"mp3\"\nformat.duration=\"3.0\"\n",
         RPC_OK, 0, 1, "mjpeg"},
        /* a video stream without a duration (a still) */
        {"streams.stream.0.codec_name=\"h264\"\nstreams.stream.0.codec_type=\"video\"\n"
         "format.format_name=\"mov,mp4\"\nformat.duration=\"N/A\"\n",
         RPC_OK, 0, 0, "h264"},
        /* no format at all */
        {"", RPC_ERR, 0, 0, ""},
        {"garbage\n=\n==\nstreams.stream.x.codec_type=video\n", RPC_ERR, 0, 0, ""},
        /* an oversized width is unknown, not wrapped */
        {"streams.stream.0.codec_name=\"vp9\"\nstreams.stream.0.codec_type=\"video\"\n"
         "streams.stream.0.width=99999999999999999999\nformat.format_name=\"matroska,webm\"\n"
         "format.duration=\"1e30\"\n",
         RPC_OK, 1, 0, "vp9"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        media_probe_info info;
        assert_int_equal(media_probe_parse(cases[i].out, &info), cases[i].st);
        assert_int_equal(info.has_video, cases[i].has_video);
        assert_int_equal(info.has_audio, cases[i].has_audio);
        assert_string_equal(info.video_codec, cases[i].vcodec);
        assert_true(info.width <= MEDIA_DIMENSION_MAX);
    }
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    snprintf(Dir, sizeof(Dir), "/tmp/lagoon-media-XXXXXX");
    assert_non_null(mkdtemp(Dir));
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=frequency=440 -t 1 "
       "-c:v libx264 -preset ultrafast -c:a aac -shortest %s/av.mp4",
       Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=64x64 -frames:v 1 -f image2 %s/still.jpg", Dir);
    sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=64x64 -frames:v 1 -f image2 %s/still.png", Dir);
    sh("echo 'not a video' > %s/text.txt", Dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sh("rm -rf %s", Dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subprocess_output),
        cmocka_unit_test(test_subprocess_truncates),
        cmocka_unit_test(test_subprocess_timeout_kills_group),
        cmocka_unit_test(test_subprocess_closes_fds),
        cmocka_unit_test(test_subprocess_limits),
        cmocka_unit_test(test_subprocess_cannot_start),
        cmocka_unit_test(test_probe_files),
        cmocka_unit_test(test_probe_parse_table),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
