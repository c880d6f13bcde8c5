/* LINK: ms_config ms_core */
/* RUNS: 180000 (inputs fuzz/run_config tries: about 15 s on two cores) */
/* Fuzz target for the configuration loader: any bytes must give either a
 * configuration or error text, never a crash or a leak; cfg_print must not
 * crash on whatever loads. (That error texts never echo a password is
 * checked by the unit tests, where it is known which value is one.) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    struct cfg *cfg = NULL;
    char *err = NULL;
    if (cfg_load_string("fuzz.yaml", text, &cfg, &err) == 0) {
        FILE *fp = fopen("/dev/null", "w");
        if (fp != NULL) {
            cfg_print(fp, cfg);
            fclose(fp);
        }
        cfg_free(cfg);
    } else {
        if (err == NULL || err[0] == '\0') {
            abort();
        }
        free(err);
    }
    free(text);
    return 0;
}
