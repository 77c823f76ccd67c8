/* Unit tests for src/core: buffers, config table, URLs, templates. */
#include <stdlib.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/fs.h"
#include "core/mem.h"
#include "core/template.h"
#include "core/url.h"
#include "harness.h"

TEST(buf_limit_refuses_growth)
{
    buf b;
    buf_init(&b, 8);
    ASSERT_INT_EQ(buf_puts(&b, "12345678"), 0);
    ASSERT_INT_EQ(buf_puts(&b, "9"), -1);
    ASSERT_STR_EQ(b.data, "12345678");
    buf_cleanup(&b);
}

TEST(buf_html_escapes)
{
    buf b;
    buf_init(&b, 0);
    buf_put_html(&b, "<a href=\"x\">'&'</a>");
    ASSERT_STR_EQ(b.data, "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    buf_cleanup(&b);
}

TEST(config_defaults_and_override)
{
    config *c = config_new("/data");
    char err[256];
    ASSERT_STR_EQ(config_get(c, "listen"), "127.0.0.1:8443");
    ASSERT_INT_EQ(config_get_int(c, "reauth_grace"), 72 * 3600);
    ASSERT_INT_EQ(config_set(c, "reauth_interval", "30d", err, sizeof(err)), 0);
    ASSERT_INT_EQ(config_get_int(c, "reauth_interval"), 30 * 86400);
    char *p = config_get_path(c, "tls_cert");
    ASSERT_STR_EQ(p, "/data/tls/server.pem");
    free(p);
    config_free(c);
}

TEST(config_errors_name_the_key)
{
    config *c = config_new(".");
    char err[256] = "";
    ASSERT_INT_EQ(config_set(c, "max_body", "12", err, sizeof(err)), -1);
    ASSERT(strncmp(err, "max_body:", 9) == 0);
    ASSERT_INT_EQ(config_set(c, "reauth_failure_action", "explode", err, sizeof(err)), -1);
    ASSERT(strstr(err, "reauth_failure_action") != NULL);
    ASSERT_INT_EQ(config_set(c, "no_such_key", "1", err, sizeof(err)), -1);
    ASSERT(strstr(err, "no_such_key") != NULL);
    ASSERT_INT_EQ(config_set(c, "reauth_grace", "3 days", err, sizeof(err)), -1);
    config_free(c);
}

TEST(config_file_env_precedence)
{
    char dir[] = "/tmp/orchard-cfg-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(dir));
    char *path = xasprintf("%s/orchard.conf", dir);
    const char *text = "# comment\nlisten = 127.0.0.1:9000\nmetrics_token = s3cret\n"
                       "storage = postgresql://orchard:pw1@db.example:5432/orchard?sslmode=require"
                       "&password=pw2&connect_timeout=5\n";
    ASSERT_INT_EQ(fs_write_file(path, text, strlen(text), 0600), 0);
    setenv("ORCHARD_LISTEN", "127.0.0.1:9001", 1);
    char err[256];
    config *c = config_load(dir, err, sizeof(err));
    unsetenv("ORCHARD_LISTEN");
    ASSERT_NOT_NULL(c);
    ASSERT_STR_EQ(config_get(c, "listen"), "127.0.0.1:9001");
    char *dump = config_dump(c);
    ASSERT(strstr(dump, "s3cret") == NULL);
    ASSERT(strstr(dump, "metrics_token = (redacted)") != NULL);
    /* A DSN's passwords, in the userinfo or as a parameter, are secrets too. */
    ASSERT(strstr(dump, "pw1") == NULL && strstr(dump, "pw2") == NULL);
    ASSERT(strstr(dump, "storage = postgresql://orchard:(redacted)@db.example:5432/orchard?"
                        "sslmode=require&password=(redacted)&connect_timeout=5\n") != NULL);
    free(dump);
    config_free(c);
    unlink(path);
    rmdir(dir);
    free(path);
}

TEST(config_bad_file_line_reports_line)
{
    char dir[] = "/tmp/orchard-cfg-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(dir));
    char *path = xasprintf("%s/orchard.conf", dir);
    const char *text = "listen = 127.0.0.1:9000\nthreads = many\n";
    fs_write_file(path, text, strlen(text), 0600);
    char err[256] = "";
    config *c = config_load(dir, err, sizeof(err));
    ASSERT(c == NULL);
    ASSERT(strstr(err, ":2: threads:") != NULL);
    unlink(path);
    rmdir(dir);
    free(path);
}

TEST(url_host_port_parses)
{
    char host[64];
    int port = 0;
    ASSERT_INT_EQ(url_host_port("https://mdm.example.com/x", host, sizeof(host), &port), 0);
    ASSERT_STR_EQ(host, "mdm.example.com");
    ASSERT_INT_EQ(port, 443);
    ASSERT_INT_EQ(url_host_port("https://[::1]:8443", host, sizeof(host), &port), 0);
    ASSERT_STR_EQ(host, "::1");
    ASSERT_INT_EQ(port, 8443);
    ASSERT_INT_EQ(url_host_port("http://x", host, sizeof(host), &port), -1);
    ASSERT_INT_EQ(url_host_port("https://x:0", host, sizeof(host), &port), -1);
}

TEST(url_form_fields)
{
    const char *body = "a=1&user-identifier=alice%40example.com&password=p+w%21&bad=%zz";
    char *v = url_form_field(body, strlen(body), "user-identifier");
    ASSERT_STR_EQ(v, "alice@example.com");
    free(v);
    v = url_form_field(body, strlen(body), "password");
    ASSERT_STR_EQ(v, "p w!");
    free(v);
    ASSERT(url_form_field(body, strlen(body), "bad") == NULL);
    ASSERT(url_form_field(body, strlen(body), "missing") == NULL);
    ASSERT(url_decode("%00", 3, 0) == NULL); /* no embedded NULs */
    ASSERT(url_decode("%4", 2, 0) == NULL);
}

TEST(template_escapes_unless_html)
{
    buf b;
    buf_init(&b, 0);
    const char *kv[] = {"name", "<b>", "x_html", "<i>", NULL};
    template_render(&b, "[{{name}}|{{x_html}}|{{unknown}}]", kv);
    ASSERT_STR_EQ(b.data, "[&lt;b&gt;|<i>|]");
    buf_cleanup(&b);
}

TEST_MAIN(TEST_ENTRY(buf_limit_refuses_growth), TEST_ENTRY(buf_html_escapes),
          TEST_ENTRY(config_defaults_and_override), TEST_ENTRY(config_errors_name_the_key),
          TEST_ENTRY(config_file_env_precedence), TEST_ENTRY(config_bad_file_line_reports_line),
          TEST_ENTRY(url_host_port_parses), TEST_ENTRY(url_form_fields),
          TEST_ENTRY(template_escapes_unless_html))
