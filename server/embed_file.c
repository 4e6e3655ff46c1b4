/* Build tool: writes a file's bytes as a C array (schema/openapi.json is served
 * from memory, so the server needs no files at run time).
 * usage: embed_file INPUT OUT.c OUT.h SYMBOL */
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: embed_file INPUT OUT.c OUT.h SYMBOL\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb"), *c = fopen(argv[2], "w"), *h = fopen(argv[3], "w");
    if (!in || !c || !h) {
        perror("embed_file");
        return 1;
    }
    const char *sym = argv[4];
    fprintf(h, "#include <stddef.h>\nextern const char %s[];\nextern const size_t %s_len;\n", sym, sym);
    fprintf(c, "#include <stddef.h>\nconst char %s[] = {\n", sym);
    size_t n = 0;
    int ch;
    while ((ch = fgetc(in)) != EOF) fprintf(c, "%d,%s", ch, ++n % 20 ? "" : "\n");
    fprintf(c, "0};\nconst size_t %s_len = %zu;\n", sym, n);
    const int bad = ferror(in) || fclose(c) || fclose(h);
    fclose(in);
    if (bad) perror("embed_file");
    return bad;
}
