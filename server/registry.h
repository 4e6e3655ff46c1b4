/* The model registry: named models, reference counted, swapped atomically.
 *
 * A model_entry is one loaded, warmed-up checkpoint under one name. It is
 * immutable once published (except the private worker-workspace slots, see
 * model_entry_workspace). A request acquires an entry once at its start and
 * releases it at its end, so every result of the request comes from one
 * checkpoint; the entry, its vit_model and its workspaces are freed when the
 * last reference goes, in whichever thread drops it.
 *
 * Publication scheme (why acquire never sees a freed entry): the name table is
 * guarded by one mutex and holds one reference to each published entry. An
 * acquire finds the entry and increments its count while holding that mutex; a
 * swap or unload replaces/removes the table's pointer under the same mutex and
 * drops the table's reference only after unlocking. So whenever a thread can
 * reach an entry through the table, the table's reference keeps the count above
 * zero, and the increment always happens on a live object. Releases use
 * acq_rel ordering, so the thread that frees sees every other holder's writes.
 * Loading and warm-up run without the table lock; loads of different names run
 * in parallel, and a second load of a name that is already loading is refused.
 *
 * Every function follows engine/errors.h: 0 on success, a negative code and a
 * one-line message in err on failure, never prints, never aborts. */
#ifndef FRANCA_REGISTRY_H
#define FRANCA_REGISTRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <pthread.h>

struct vit_model;
struct vit_workspace;

/* Return codes. Routes map them to HTTP statuses as noted. */
enum registry_status {
    REGISTRY_OK = 0,
    REGISTRY_ERR = -1,       /* load/validation/warm-up failure or out of memory; the message
                                says why (a bad checkpoint is the caller's mistake: 422) */
    REGISTRY_NOT_FOUND = -2, /* no model by that name (404) */
    REGISTRY_BUSY = -3,      /* a load of that name is in progress (409) */
    REGISTRY_LAST = -4,      /* refusing to unload the last model (409) */
    REGISTRY_INVALID = -5,   /* malformed name (400) */
};

#define REGISTRY_NAME_MAX 64  /* names: 1..63 chars of [A-Za-z0-9._-], not starting with '.' */
#define REGISTRY_WS_SLOTS 4   /* worker workspace slots per entry */

struct model_entry {
    /* Public, immutable once published. */
    char name[REGISTRY_NAME_MAX];
    struct vit_model *model;
    char fingerprint[65];     /* sha256 of the checkpoint file, lowercase hex */
    char *path;               /* checkpoint path as given to registry_load */
    time_t loaded_at;         /* wall-clock time the entry was published */
    char loaded_at_iso[32];   /* the same as RFC 3339 UTC, "2025-01-31T12:00:00Z" */
    char device[16];          /* "cpu" or "cuda" (resolved, never "auto") */
    char precision[8];        /* "fp32" or "bf16" (resolved, never "auto") */
    bool warmed_up;           /* always true for a published entry */
    double load_seconds;      /* checkpoint load + validation */
    double warmup_seconds;    /* the warm-up forward */
    uint64_t id;              /* unique in the process, never reused */

    /* Private. */
    atomic_long refs;
    pthread_mutex_t ws_lock;
    struct {
        const void *owner;
        struct vit_workspace *ws;
    } ws_slots[REGISTRY_WS_SLOTS];
};

struct registry;

struct registry_stats {
    unsigned long loads_ok;     /* registry_load that published (new name or swap) */
    unsigned long loads_failed; /* load, validation or warm-up failed (old entry kept) */
    unsigned long loads_busy;   /* refused: same name already loading */
    unsigned long unloads;      /* successful registry_unload */
    int loading;                /* loads in progress now */
    int models;                 /* published models now */
};

/* device: "cpu", "cuda" or "auto" (cuda when a GPU is usable); precision:
 * "fp32", "bf16" or "auto" (vit_precision_parse; NULL means auto). Both are
 * resolved once and apply to every entry. "cuda" without a usable GPU, or
 * bf16 on a CPU without AVX-512, fails. */
int registry_create(struct registry **out, const char *device, const char *precision, char *err,
                    size_t errlen);
/* Drops the table's references. Entries still acquired by someone stay valid
 * until their holders release them (entries never point back to the registry).
 * No load may be in progress. */
void registry_free(struct registry *reg);

/* Loads the checkpoint at path, warms it up (one forward at the model's default
 * crop size), then publishes it under name: new acquires get it, holders of the
 * previous entry keep that one until they release it. A new name is added (the
 * first model ever added is the default). Blocks for the load and warm-up
 * (seconds for large models); do not call it from a thread that must not block.
 * REGISTRY_BUSY when the same name is already loading; REGISTRY_ERR when the load or
 * warm-up fails, in which case the previous entry keeps serving. On success and
 * when out is not NULL, *out is an acquired reference to the new entry (release
 * it). */
int registry_load(struct registry *reg, const char *name, const char *path,
                  struct model_entry **out, char *err, size_t errlen);

/* Unpublishes name; the entry is freed when its last user releases it.
 * REGISTRY_LAST when it is the only published model, REGISTRY_NOT_FOUND, REGISTRY_BUSY when a
 * load of that name is in progress. If the default model is unloaded, the
 * earliest-added remaining model becomes the default. */
int registry_unload(struct registry *reg, const char *name, char *err, size_t errlen);

/* Acquires the entry published under name (NULL or "": the default model).
 * REGISTRY_NOT_FOUND for an unknown name. Pair with model_entry_release. */
int registry_acquire(struct registry *reg, const char *name, struct model_entry **out,
                     char *err, size_t errlen);

/* Takes one more reference to an entry the caller already holds. */
void model_entry_retain(struct model_entry *e);
/* Drops one reference; frees the entry at the last one. NULL is ignored. */
void model_entry_release(struct model_entry *e);

/* A snapshot of every published entry in the order they were added, each
 * acquired. *default_index is the default model's position (-1 when empty; may be
 * NULL). Free with registry_list_free. */
int registry_list(struct registry *reg, struct model_entry ***out, size_t *n,
                  int *default_index, char *err, size_t errlen);
void registry_list_free(struct model_entry **entries, size_t n);

/* Writes the default model's name into buf ("" when none). */
void registry_default_name(struct registry *reg, char *buf, size_t cap);

void registry_get_stats(struct registry *reg, struct registry_stats *st);

/* For inference workers: a workspace slot of this entry reserved for owner
 * (created on first use; NULL when REGISTRY_WS_SLOTS other owners hold them). Only
 * owner reads or writes *slot, and only while it holds a reference to the entry;
 * the workspace is freed with the entry (or earlier by the owner, setting *slot
 * to NULL). A workspace must never be used with another model: its buffers are
 * sized by the model's dimensions, which vit_forward does not re-check. */
struct vit_workspace **model_entry_workspace(struct model_entry *e, const void *owner);

/* True when name is acceptable to the registry. */
bool registry_name_valid(const char *name);

#endif
