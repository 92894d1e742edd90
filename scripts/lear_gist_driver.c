/* Times lear-gist's color_gist_scaletab (the C library, unmodified) on raw RGB images, for
 * scripts/bench_gist.py (which builds this file against the library's sources; see scripts/lear_gist.py).
 *
 *   lear_gist_driver IMAGES N H W NBLOCKS ORIENTATIONS MIN_SECONDS OUT
 *
 * IMAGES: N*H*W*3 bytes, row-major RGB. ORIENTATIONS: per scale, comma separated ("8,8,4").
 * OUT: the N descriptors of the first pass, float32, N*D values; "-" for none (a timing run).
 *
 * Prints "ready" once the images are in memory, then waits for a line on stdin, so that several
 * processes start computing together. Each call does what one call of the library costs a caller:
 * the colour image is allocated and filled from the bytes, described, and both are freed. The calls
 * go over the images in order, again and again, until MIN_SECONDS have passed (and, with an OUT
 * file, every image was done once); then prints "done CALLS WALL_SECONDS CPU_SECONDS".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gist.h"

#define MAX_SCALES 16

static double seconds(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int fail(const char *message) {
    fprintf(stderr, "lear_gist_driver: %s\n", message);
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 9)
        return fail("usage: lear_gist_driver IMAGES N H W NBLOCKS ORIENTATIONS MIN_SECONDS OUT");
    long n = atol(argv[2]);
    int h = atoi(argv[3]), w = atoi(argv[4]), nblocks = atoi(argv[5]);
    double min_seconds = atof(argv[7]);
    int orientations[MAX_SCALES], scales = 0;
    for (char *tok = strtok(argv[6], ","); tok; tok = strtok(NULL, ",")) {
        if (scales == MAX_SCALES)
            return fail("too many scales");
        orientations[scales] = atoi(tok);
        if (orientations[scales] < 1)
            return fail("orientations must be positive integers");
        scales++;
    }
    if (n < 1 || h < 8 || w < 8 || nblocks < 1 || scales < 1 || min_seconds < 0)
        return fail("need N >= 1, H and W >= 8, NBLOCKS >= 1, at least one scale, MIN_SECONDS >= 0");

    size_t pixels = (size_t)h * (size_t)w;
    unsigned char *bytes = malloc((size_t)n * pixels * 3);
    FILE *in = fopen(argv[1], "rb");
    if (!bytes || !in)
        return fail("cannot read the images file (or out of memory)");
    if (fread(bytes, 3 * pixels, (size_t)n, in) != (size_t)n)
        return fail("the images file is shorter than N*H*W*3 bytes");
    fclose(in);

    int dim = 0;
    for (int s = 0; s < scales; s++)
        dim += nblocks * nblocks * orientations[s];
    dim *= 3;
    float *out = malloc(sizeof(float) * (size_t)dim * (size_t)n);
    if (!out)
        return fail("out of memory");

    printf("ready\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return fail("no start line on stdin");

    int keep = strcmp(argv[8], "-") != 0;
    long needed = keep ? n : 1;
    double wall0 = seconds(CLOCK_MONOTONIC), cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
    long calls = 0;
    for (;;) {
        long i = calls % n;
        const unsigned char *p = bytes + (size_t)i * pixels * 3;
        color_image_t *im = color_image_new(w, h);
        for (size_t k = 0; k < pixels; k++) {
            im->c1[k] = p[3 * k];
            im->c2[k] = p[3 * k + 1];
            im->c3[k] = p[3 * k + 2];
        }
        float *desc = color_gist_scaletab(im, nblocks, scales, orientations);
        if (keep && calls < n)
            memcpy(out + (size_t)i * dim, desc, sizeof(float) * (size_t)dim);
        free(desc);
        color_image_delete(im);
        calls++;
        if (calls >= needed && seconds(CLOCK_MONOTONIC) - wall0 >= min_seconds)
            break;
    }
    double wall = seconds(CLOCK_MONOTONIC) - wall0, cpu = seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0;

    if (keep) {
        FILE *o = fopen(argv[8], "wb");
        if (!o || fwrite(out, sizeof(float) * (size_t)dim, (size_t)n, o) != (size_t)n || fclose(o) != 0)
            return fail("cannot write the descriptors file");
    }
    printf("done %ld %.6f %.6f\n", calls, wall, cpu);
    return 0;
}
