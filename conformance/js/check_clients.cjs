// Microsoft's JavaScript clients, unmodified, against `b2b-convert emulator --tls`: @azure/identity
// (msal-node inside) signs in by client secret, the Graph JavaScript client reads a page of users
// and sends an invitation. Same environment and output as check_clients.py: `PASS name` or
// `FAIL name: why` per check, exit status 1 when any failed. Node trusts the emulator's CA through
// NODE_EXTRA_CA_CERTS, which run.sh sets to SSL_CERT_FILE.
"use strict";

const { ClientSecretCredential } = require("@azure/identity");
const { Client } = require("@microsoft/microsoft-graph-client");

const GRAPH = process.env.B2B_GRAPH_URL;
const LOGIN = process.env.B2B_LOGIN_URL;
const TENANT = process.env.AZURE_TENANT_ID;
const CLIENT_ID = process.env.AZURE_CLIENT_ID;
const SECRET = process.env.AZURE_CLIENT_SECRET;
const SCOPE = "https://graph.microsoft.com/.default";
// A user of the shipped sample tenant a conversion accepts, not used by the Python checks.
const INVITED_USER = "8340a3bc-1176-5bfa-9976-b1052903aa23";

const results = [];

async function check(name, fn) {
  try {
    await fn();
    results.push(true);
    console.log(`PASS ${name}`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL ${name}: ${e && e.message ? e.message : e}`);
    console.error(e);
  }
}

function expect(cond, why) {
  if (!cond) throw new Error(why);
}

function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
}

const credential = new ClientSecretCredential(TENANT, CLIENT_ID, SECRET, {
  authorityHost: LOGIN,
  disableInstanceDiscovery: true,
});

// The Graph client's documented custom authentication provider, on the emulator's origin.
const graph = Client.initWithMiddleware({
  baseUrl: `${GRAPH}/`,
  defaultVersion: "v1.0",
  customHosts: new Set([new URL(GRAPH).hostname]),
  authProvider: { getAccessToken: async () => (await credential.getToken(SCOPE)).token },
});

(async () => {
  await check("@azure/identity ClientSecretCredential", async () => {
    const token = await credential.getToken(SCOPE);
    const c = claims(token.token);
    expect(c.appid === CLIENT_ID && c.tid === TENANT, `claims ${JSON.stringify(c)}`);
  });

  await check("Graph JS client users page (@odata.nextLink)", async () => {
    const page = await graph.api("/users").top(5).select("id").get();
    expect(page.value.length === 5, `page of ${page.value.length}`);
    const next = page["@odata.nextLink"];
    expect(next && next.startsWith(`${GRAPH}/v1.0/users`), `next ${next}`);
    const second = await graph.api(next).get();
    expect(second.value.length > 0, "a second page");
  });

  await check("Graph JS client invitation", async () => {
    const user = await graph.api(`/users/${INVITED_USER}`).get();
    const answer = await graph.api("/invitations").post({
      invitedUserEmailAddress: user.mail,
      sendInvitationMessage: false,
      inviteRedirectUrl: `https://myapps.microsoft.com?tenantId=${TENANT}`,
      invitedUser: { id: INVITED_USER },
    });
    expect(answer.invitedUser.id === INVITED_USER, `invited ${answer.invitedUser.id}`);
    expect(answer.status === "PendingAcceptance", `status ${answer.status}`);
  });

  const passed = results.filter(Boolean).length;
  console.log(`${passed} passed, ${results.length - passed} failed`);
  process.exit(results.every(Boolean) ? 0 : 1);
})();
