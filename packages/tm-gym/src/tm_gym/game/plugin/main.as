// tm-gym telemetry: streams the state of the car to one local TCP client, once per frame.
//
// Wire format (little-endian float32, see tm_gym/game/telemetry.py):
//   * tm-gym v2 (default): the 8 bytes "TMGYM" 0x02 0x00 0x00 once after connecting, then
//     records of 19 floats: speed (km/h), distance (m), x, y, z (m), steer, gas, brake (1/0),
//     finished (1/0), gear, rpm, race time (s), checkpoints passed, velocity x, y, z (m/s),
//     yaw, pitch, roll (rad).
//   * TMRL-compatible (setting): no header, records of the first 11 floats only, which is what
//     TMRL's own plugin sends, so TMRL clients work unchanged.
//
// Only 127.0.0.1 is listened on: nothing outside this PC can connect. One client at a time; when
// it goes away (a write fails) the plugin waits for the next one. Outside a race (menus,
// loading) no record is sent, so a client sees a stall instead of garbage.
//
// The car is the first player of the arena, read through VehicleState's viewing-player state:
// in a local solo game they are the same car.

[Setting category="Connection" name="Port" min=1024 max=65535 description="TCP port the plugin listens on (127.0.0.1 only). Must match tm-gym's --port."]
int Setting_Port = 9000;

[Setting category="Connection" name="TMRL-compatible" description="Send TMRL's 11-float records without a header instead of tm-gym v2 (19 floats after a header)."]
bool Setting_TmrlCompatible = false;

const string HOST = "127.0.0.1";

// One record, in wire order.
class CarState
{
    float speed = 0;      // km/h, negative in reverse
    float distance = 0;   // metres driven in this race
    vec3 position;        // metres, y up
    float steer = 0;      // -1 left ... +1 right
    float gas = 0;        // 0 ... 1
    float brake = 0;      // 1 when braking
    float finished = 0;   // 1 while the finish sequence shows
    float gear = 0;
    float rpm = 0;
    float raceTime = 0;   // seconds since the start (negative during the countdown)
    float checkpoint = 0; // checkpoints passed in this race
    vec3 velocity;        // m/s, world axes
    float yaw = 0;        // heading in the x-z plane: 0 along +x, +pi/2 along +z
    float pitch = 0;      // nose up positive
    float roll = 0;       // left side up positive
}

void Main()
{
    // Listen forever; if the port cannot be opened (taken by another program), say so and retry.
    while (true) {
        int port = Setting_Port;
        Net::Socket@ server = Net::Socket();
        if (!server.Listen(HOST, port)) {
            warn("tm-gym: cannot listen on " + HOST + ":" + port + " (port in use?); retrying in 5 s");
            sleep(5000);
            continue;
        }
        trace("tm-gym: listening on " + HOST + ":" + port);
        ServeClients(server, port);
        server.Close();
    }
}

// Accepts clients one after the other until the port setting changes.
void ServeClients(Net::Socket@ server, int port)
{
    while (Setting_Port == port) {
        Net::Socket@ client = server.Accept();
        if (client is null) {
            yield();  // nobody yet: look again next frame
            continue;
        }
        trace("tm-gym: client connected");
        Stream(client, port);
        client.Close();
        trace("tm-gym: client gone");
    }
}

// Sends one record per frame until a write fails or a setting changes.
void Stream(Net::Socket@ client, int port)
{
    while (!client.CanWrite()) {
        yield();
    }
    bool tmrl = Setting_TmrlCompatible;
    if (!tmrl && !WriteMagic(client)) {
        return;
    }
    CarState state;
    while (Setting_Port == port && Setting_TmrlCompatible == tmrl) {
        if (ReadCar(state) && !WriteRecord(client, state, tmrl)) {
            return;
        }
        yield();  // wait for the next frame
    }
}

bool WriteMagic(Net::Socket@ client)
{
    // "TMGYM", protocol version 2, two reserved zero bytes.
    array<uint8> magic = {0x54, 0x4D, 0x47, 0x59, 0x4D, 0x02, 0x00, 0x00};
    for (uint i = 0; i < magic.Length; i++) {
        if (!client.Write(magic[i])) {
            return false;
        }
    }
    return true;
}

bool WriteRecord(Net::Socket@ client, CarState@ s, bool tmrl)
{
    // Stop at the first failed write: the client is gone.
    bool ok = client.Write(s.speed)
        && client.Write(s.distance)
        && client.Write(s.position.x)
        && client.Write(s.position.y)
        && client.Write(s.position.z)
        && client.Write(s.steer)
        && client.Write(s.gas)
        && client.Write(s.brake)
        && client.Write(s.finished)
        && client.Write(s.gear)
        && client.Write(s.rpm);
    if (!ok || tmrl) {
        return ok;
    }
    return client.Write(s.raceTime)
        && client.Write(s.checkpoint)
        && client.Write(s.velocity.x)
        && client.Write(s.velocity.y)
        && client.Write(s.velocity.z)
        && client.Write(s.yaw)
        && client.Write(s.pitch)
        && client.Write(s.roll);
}

// Fills `s` with the state of the first player's car; false outside a race.
bool ReadCar(CarState@ s)
{
    CTrackMania@ app = cast<CTrackMania>(GetApp());
    if (app is null) return false;
    CSmArenaClient@ playground = cast<CSmArenaClient>(app.CurrentPlayground);
    if (playground is null || playground.Arena is null) return false;
    if (playground.Arena.Players.Length == 0) return false;
    CSmPlayer@ player = cast<CSmPlayer>(playground.Arena.Players[0]);
    if (player is null) return false;
    CSmScriptPlayer@ api = cast<CSmScriptPlayer>(player.ScriptAPI);
    if (api is null) return false;
    CSceneVehicleVisState@ vis = VehicleState::ViewingPlayerState();
    if (vis is null) return false;

    s.speed = vis.FrontSpeed * 3.6f;
    s.distance = api.Distance;
    s.position = vis.Position;
    s.steer = vis.InputSteer;
    s.gas = vis.InputGasPedal;
    s.brake = vis.InputIsBraking ? 1.0f : 0.0f;
    s.finished = IsFinished(playground) ? 1.0f : 0.0f;
    s.gear = float(vis.CurGear);
    s.rpm = VehicleState::GetRPM(vis);

    s.raceTime = float(api.CurrentRaceTime) / 1000.0f;  // milliseconds in the game
    s.checkpoint = float(api.RaceWaypointTimes.Length);
    s.velocity = vis.WorldVel;

    vec3 dir = vis.Dir;
    vec3 up = vis.Up;
    vec3 left = vis.Left;
    s.yaw = Math::Atan2(dir.z, dir.x);
    s.pitch = Math::Asin(Math::Clamp(dir.y, -1.0f, 1.0f));
    s.roll = Math::Atan2(left.y, up.y);
    return true;
}

// True while the game shows the finish sequence (the car crossed the finish line).
bool IsFinished(CSmArenaClient@ playground)
{
    if (playground.UIConfigs.Length == 0) return false;
    return playground.UIConfigs[0].UISequence == CGamePlaygroundUIConfig::EUISequence::Finish;
}
