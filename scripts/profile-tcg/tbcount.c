/* Minimal QEMU TCG plugin: counts executions of every translation block (per guest vaddr)
 * and writes "vaddr n_insns execs last_insn_word" lines to the file given as out=PATH.
 * Declarations copied by hand (only APIs stable since plugin API v1). */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
typedef uint64_t qemu_plugin_id_t;
typedef struct { const char *target_name; struct { int min, cur; } version; bool system_emulation; } qemu_info_t;
struct qemu_plugin_tb; struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb, enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
size_t qemu_plugin_insn_data(const struct qemu_plugin_insn *insn, void *dest, size_t len); /* v3+ */
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
#ifndef PLUGIN_API
#define PLUGIN_API 4
#endif
__attribute__((visibility("default"))) int qemu_plugin_version = PLUGIN_API;

struct rec { uint64_t vaddr; uint32_t n; uint32_t last; uint64_t execs[8]; struct rec *next; };
static struct rec *head; static pthread_mutex_t lk = PTHREAD_MUTEX_INITIALIZER;
static const char *out = "/tmp/tbcount.txt";

static void exec_cb(unsigned int vcpu, void *ud) { ((struct rec *)ud)->execs[vcpu & 7]++; }

static void trans_cb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    struct rec *r = calloc(1, sizeof *r);
    r->vaddr = qemu_plugin_tb_vaddr(tb);
    r->n = qemu_plugin_tb_n_insns(tb);
    if (r->n) qemu_plugin_insn_data(qemu_plugin_tb_get_insn(tb, r->n - 1), &r->last, 4);
    pthread_mutex_lock(&lk); r->next = head; head = r; pthread_mutex_unlock(&lk);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, exec_cb, QEMU_PLUGIN_CB_NO_REGS, r);
}

static void at_exit(qemu_plugin_id_t id, void *ud) {
    FILE *f = fopen(out, "w");
    if (!f) return;
    for (struct rec *r = head; r; r = r->next)
        for (int c = 0; c < 8; c++)
            if (r->execs[c]) fprintf(f, "%d %" PRIx64 " %u %" PRIu64 " %08x\n", c, r->vaddr, r->n, r->execs[c], r->last);
    fclose(f);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++) if (!strncmp(argv[i], "out=", 4)) out = argv[i] + 4;
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans_cb);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
